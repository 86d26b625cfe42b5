"""HTTP and WebSocket routing, on one path compiler."""

from __future__ import annotations

from nexios.routing.http import Route, Router
from nexios.routing.paths import Convertor, compile_path, register_convertor
from nexios.routing.websocket import WebSocketRoute, WebsocketRoutes, WSRouter

__all__ = [
    "Convertor",
    "Route",
    "Router",
    "WSRouter",
    "WebSocketRoute",
    "WebsocketRoutes",
    "compile_path",
    "register_convertor",
]
