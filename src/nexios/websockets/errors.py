"""The WebSocket exceptions, where seed 004 imports them from."""

from __future__ import annotations

from nexios.exceptions import (
    WebSocketDisconnect,
    WebSocketException,
    WebSocketInvalidJSON,
    WebSocketStateError,
    WebSocketUnsupported,
    WebSocketUnsupportedData,
)

__all__ = [
    "WebSocketDisconnect",
    "WebSocketException",
    "WebSocketInvalidJSON",
    "WebSocketStateError",
    "WebSocketUnsupported",
    "WebSocketUnsupportedData",
]
