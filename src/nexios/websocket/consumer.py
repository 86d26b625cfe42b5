"""``nexios.websocket.consumer``: where seed 000 imports ``WebSocketEndpoint`` from."""

from __future__ import annotations

from nexios.websockets.base import WebSocket, WebSocketState
from nexios.websockets.consumers import WebSocketConsumer, WebSocketEndpoint
from nexios.websockets.errors import WebSocketDisconnect, WebSocketException

__all__ = [
    "WebSocket",
    "WebSocketConsumer",
    "WebSocketDisconnect",
    "WebSocketEndpoint",
    "WebSocketException",
    "WebSocketState",
]
