"""Class-based WebSocket handlers.

Subclass :class:`WebSocketConsumer`, override ``on_connect``, ``on_receive`` and
``on_disconnect``, and register it with ``app.add_ws_route(Consumer.as_route("/path"))``
(or set ``path`` on the class and pass the class or an instance to ``add_ws_route``).
Registered as a class, one instance serves one connection; registered as an instance,
that instance serves every connection (keep per-connection data in ``ws.state``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Literal

from nexios.exceptions import (
    ImproperlyConfigured,
    WebSocketDisconnect,
    WebSocketException,
    WebSocketUnsupportedData,
)
from nexios.types import Message
from nexios.websockets.base import WebSocket, WebSocketState
from nexios.websockets.codec import decode_json

__all__ = ["WebSocketConsumer", "WebSocketEndpoint"]

Encoding = Literal["text", "bytes", "json"] | None


class WebSocketConsumer:
    """A WebSocket handler written as a class.

    ``encoding`` decides what ``on_receive`` gets: ``"text"`` (a str; a binary message
    closes the connection with 1003), ``"bytes"`` (bytes; text closes with 1003),
    ``"json"`` (the parsed value; invalid JSON closes with 1007), or ``None`` (str or
    bytes, as sent).
    """

    encoding: ClassVar[Encoding] = None
    path: ClassVar[str | None] = None
    name: ClassVar[str | None] = None
    middleware: ClassVar[Sequence[Callable[..., Awaitable[Any]]]] = ()

    async def on_connect(self, ws: WebSocket) -> None:
        """Called first; accepts the connection unless overridden."""
        await ws.accept()

    async def on_receive(self, ws: WebSocket, data: Any) -> None:
        """Called with each message, decoded according to ``encoding``."""

    async def on_disconnect(self, ws: WebSocket, close_code: int) -> None:
        """Called once when the connection ends, however it ends."""

    def decode(self, message: Message) -> Any:
        text = message.get("text")
        data = message.get("bytes")
        encoding = self.encoding
        if encoding is None:
            return data if text is None else text
        if encoding == "text":
            if text is None:
                raise WebSocketUnsupportedData("Expected a text message, got a binary one.")
            return text
        if encoding == "bytes":
            if data is None:
                raise WebSocketUnsupportedData("Expected a binary message, got a text one.")
            return data
        if encoding == "json":
            return decode_json(text if text is not None else data or b"")
        raise ImproperlyConfigured(
            f"{type(self).__name__}.encoding is {encoding!r}: use 'text', 'bytes', 'json' or None."
        )

    async def serve(self, ws: WebSocket) -> None:
        """Run the consumer over one connection."""
        close_code = 1000
        try:
            await self.on_connect(ws)
            if ws.application_state is not WebSocketState.CONNECTED:
                close_code = ws.close_code or 1000
                return
            while True:
                message = await ws.receive()
                await self.on_receive(ws, self.decode(message))
        except WebSocketDisconnect as exc:
            close_code = exc.code
        except WebSocketException as exc:
            close_code = exc.code
            raise
        except BaseException:
            close_code = 1011
            raise
        finally:
            await self.on_disconnect(ws, close_code)

    @classmethod
    def as_route(cls, path: str | None = None, *, name: str | None = None) -> Any:
        """A ``WebsocketRoutes`` that serves this consumer (one instance per connection)."""
        from nexios.routing.websocket import WebsocketRoutes

        return WebsocketRoutes(path_of(cls, path), cls, name=name or cls.name or cls.__name__)

    @classmethod
    def as_endpoint(cls) -> Callable[[WebSocket], Awaitable[None]]:
        async def endpoint(ws: WebSocket) -> None:
            await cls().serve(ws)

        return endpoint


def path_of(target: Any, path: str | None = None) -> str:
    path = path or getattr(target, "path", None)
    if not path:
        name = target.__name__ if isinstance(target, type) else type(target).__name__
        raise ImproperlyConfigured(
            f"{name} has no path: use {name}.as_route('/path'), or set path = '/path' on the class."
        )
    return str(path)


WebSocketEndpoint = WebSocketConsumer
