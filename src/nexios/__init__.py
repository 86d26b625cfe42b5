"""nexios: an ASGI framework for real-time applications, built around WebSockets."""

from __future__ import annotations

from nexios.application import Nexios, NexiosApp, get_application
from nexios.config import WebSocketConfig
from nexios.datastructures import URL, Address, Headers, QueryParams, State
from nexios.exceptions import (
    HTTPException,
    NexiosError,
    WebSocketDisconnect,
    WebSocketException,
)
from nexios.http import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    NexiosResponse,
    PlainTextResponse,
    RedirectResponse,
    Request,
    Response,
)
from nexios.routing import Route, Router, WebsocketRoutes, WSRouter
from nexios.websockets import WebSocket, WebSocketState
from nexios.websockets.consumers import WebSocketConsumer, WebSocketEndpoint

__version__ = "0.1.0"

__all__ = [
    "URL",
    "Address",
    "FileResponse",
    "HTMLResponse",
    "HTTPException",
    "Headers",
    "JSONResponse",
    "Nexios",
    "NexiosApp",
    "NexiosError",
    "NexiosResponse",
    "PlainTextResponse",
    "QueryParams",
    "RedirectResponse",
    "Request",
    "Response",
    "Route",
    "Router",
    "State",
    "WSRouter",
    "WebSocket",
    "WebSocketConfig",
    "WebSocketConsumer",
    "WebSocketDisconnect",
    "WebSocketEndpoint",
    "WebSocketException",
    "WebSocketState",
    "WebsocketRoutes",
    "get_application",
]
