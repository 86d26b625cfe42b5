"""Test nexios (or any ASGI) apps in process: HTTP through httpx, WebSockets, lifespan.

::

    async with TestClient(app) as client:
        response = await client.get("/")
        async with client.websocket_connect("/ws") as websocket:
            await websocket.send_text("Hello")
            assert await websocket.receive_text() == "Echo: Hello"

    with TestClient(app) as client:
        response = client.get("/")
        with client.websocket_connect("/ws") as websocket:
            websocket.send_text("Hello")
"""

from __future__ import annotations

try:
    import httpx  # noqa: F401
except ImportError as exc:  # pragma: no cover
    raise ImportError(
        'nexios.testing needs httpx, which is not installed: pip install "nexios[testing]"'
    ) from exc

from nexios.testing._asgi import LifespanFailed
from nexios.testing.client import AsyncTestClient, TestClient
from nexios.testing.websocket import (
    AsyncWebSocketSession,
    Envelope,
    WebSocketDenied,
    WebSocketDisconnect,
    WebSocketTestSession,
)

__all__ = [
    "AsyncTestClient",
    "AsyncWebSocketSession",
    "Envelope",
    "LifespanFailed",
    "TestClient",
    "WebSocketDenied",
    "WebSocketDisconnect",
    "WebSocketTestSession",
]
