"""``nexios.websocket``: the singular spelling some seeds import from.

It is the same package as :mod:`nexios.websockets` under another name.
"""

from __future__ import annotations

from nexios.websockets import (
    WebSocket,
    WebSocketDisconnect,
    WebSocketException,
    WebSocketInvalidJSON,
    WebSocketState,
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
