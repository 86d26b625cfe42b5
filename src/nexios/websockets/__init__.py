"""The WebSocket connection and its exceptions."""

from __future__ import annotations

from nexios.websockets.base import WebSocket, WebSocketState
from nexios.websockets.errors import (
    WebSocketDisconnect,
    WebSocketException,
    WebSocketInvalidJSON,
    WebSocketStateError,
    WebSocketUnsupported,
    WebSocketUnsupportedData,
)

__all__ = [
    "WebSocket",
    "WebSocketDisconnect",
    "WebSocketException",
    "WebSocketInvalidJSON",
    "WebSocketState",
    "WebSocketStateError",
    "WebSocketUnsupported",
    "WebSocketUnsupportedData",
]
