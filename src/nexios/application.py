"""The application: lifespan, HTTP and WebSocket routing, and ``run()``.

``NexiosApp`` is an ASGI app. Each scope goes one way::

    lifespan  -> startup / shutdown hooks (and the ``lifespan=`` context)
    http      -> error guard -> root HTTP Router -> Route -> handler
    websocket -> root WSRouter -> [app, router..., route] middleware -> handler
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

from nexios.channels.brokers.base import Broker
from nexios.channels.layer import ChannelLayer
from nexios.channels.log import Bounds
from nexios.config import WebSocketConfig
from nexios.datastructures import State
from nexios.exceptions import ImproperlyConfigured, NoMatchFound
from nexios.http.response import JSONResponse, PlainTextResponse, Response
from nexios.routing.http import Router
from nexios.routing.websocket import (
    ExceptionHandler,
    Handler,
    Middleware,
    WebsocketRoutes,
    WSRouter,
    route_path,
)
from nexios.types import Message, Receive, Scope, Send
from nexios.websockets.guard import ConnectionGuard

__all__ = ["Nexios", "NexiosApp", "get_application"]

logger = logging.getLogger("nexios")

F = TypeVar("F", bound=Callable[..., Any])
Hook: TypeAlias = Callable[[], Any]
Lifespan: TypeAlias = Callable[["NexiosApp"], contextlib.AbstractAsyncContextManager[Any]]


class NexiosApp:
    """A nexios application.

    >>> app = NexiosApp()
    >>> @app.ws_route("/ws")
    ... async def echo(ws):
    ...     await ws.accept()
    ...     async for text in ws.iter_text():
    ...         await ws.send_text(text)
    """

    def __init__(
        self,
        *,
        title: str = "Nexios",
        websocket_config: WebSocketConfig | None = None,
        lifespan: Lifespan | None = None,
        on_startup: Sequence[Hook] = (),
        on_shutdown: Sequence[Hook] = (),
        broker: Broker | str | None = None,
        history_size: int = 100,
        log: Bounds | None = None,
        debug: bool = False,
    ) -> None:
        self.title = title
        self.debug = debug
        self.websocket_config = config = websocket_config or WebSocketConfig()
        self.state = State()
        self.router = Router()
        self.router.not_found = self._not_found
        # Groups and broadcasts. broker: a URL (memory://, redis://host:port/db) or a
        # Broker; without one, $NEXIOS_BROKER_URL, else memory:// (one process).
        # log: how much of each group's stream is kept (for members that are behind,
        # resume with since=, and history()); history_size: what history() returns.
        self.channels = ChannelLayer(
            broker,
            outbox_size=config.outbox_size,
            slow_consumer=config.slow_consumer,
            history_size=history_size,
            log=log,
        )
        self.ws_router = WSRouter()
        self.ws_router.bind_channels(self.channels, "nexios:app")
        self.ws_router.config = config
        # Origins, connection limits, rate limits: refusals are counted in guard.stats.
        self.guard = self.ws_router.guard = ConnectionGuard()
        self._lifespan = lifespan
        self._running = 0  # lifespans started and not yet shut down
        self._startup: list[Hook] = list(on_startup)
        self._shutdown: list[Hook] = list(on_shutdown)

    # ------------------------------------------------------------------ lifespan

    def on_startup(self, fn: F) -> F:
        """Run ``fn`` (sync or async) when the server starts; usable as a decorator."""
        self._startup.append(fn)
        return fn

    def on_shutdown(self, fn: F) -> F:
        """Run ``fn`` (sync or async) when the server stops; usable as a decorator."""
        self._shutdown.append(fn)
        return fn

    add_startup_handler = on_startup
    add_shutdown_handler = on_shutdown

    async def _handle_lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        context: contextlib.AbstractAsyncContextManager[Any] | None = None
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            self._running += 1
            await self.channels.start()
            if self._lifespan is not None:
                context = self._lifespan(self)
                provided = await context.__aenter__()
                if isinstance(provided, Mapping) and "state" in scope:
                    scope["state"].update(provided)
            for hook in self._startup:
                await _call_hook(hook)
        except BaseException as exc:
            text = f"Application startup failed: {exc.__class__.__name__}: {exc}"
            logger.exception(text)
            await send({"type": "lifespan.startup.failed", "message": text})
            return
        await send({"type": "lifespan.startup.complete"})

        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        failures: list[str] = []
        for hook in self._shutdown:
            try:
                await _call_hook(hook)
            except Exception as exc:
                logger.exception("Shutdown hook %s failed", _name(hook))
                failures.append(f"{_name(hook)}: {exc!r}")
        if context is not None:
            try:
                await context.__aexit__(None, None, None)
            except Exception as exc:
                logger.exception("The lifespan context failed on exit")
                failures.append(f"lifespan: {exc!r}")
        self._running -= 1
        try:
            if not self._running:  # the last of the servers (or test clients) serving it
                await self.channels.stop()
        except Exception as exc:
            logger.exception("The channel layer failed to stop")
            failures.append(f"channels: {exc!r}")
        if failures:
            await send({"type": "lifespan.shutdown.failed", "message": "; ".join(failures)})
        else:
            await send({"type": "lifespan.shutdown.complete"})

    # ------------------------------------------------------------------ WebSocket routes

    def ws_route(
        self,
        path: str,
        *,
        name: str | None = None,
        middleware: Sequence[Middleware] | None = None,
        config: WebSocketConfig | None = None,
    ) -> Callable[[F], F]:
        """Decorator: serve WebSocket connections on ``path``."""
        return self.ws_router.ws_route(path, name=name, middleware=middleware, config=config)

    websocket_route = ws_route
    ws = ws_route

    def add_ws_route(
        self,
        route: WebsocketRoutes | str,
        handler: Handler | None = None,
        *,
        name: str | None = None,
        middleware: Sequence[Middleware] | None = None,
        config: WebSocketConfig | None = None,
    ) -> WebsocketRoutes:
        return self.ws_router.add_ws_route(
            route, handler, name=name, middleware=middleware, config=config
        )

    def mount_ws_router(self, router: WSRouter, prefix: str | None = None) -> None:
        """Serve ``router``'s routes; ``prefix``, if given, replaces the router's own.

        The router gets the app's channel layer, for ``router.broadcast``.
        """
        if not isinstance(router, WSRouter):
            raise ImproperlyConfigured(
                f"mount_ws_router takes a WSRouter, got {type(router).__name__}; "
                "an HTTP Router is mounted with app.mount_router()."
            )
        self.ws_router.mount_router(router, prefix)

    def add_ws_middleware(self, middleware: Middleware) -> None:
        """Run ``middleware(ws, call_next)`` for every WebSocket connection, first."""
        self.ws_router.add_ws_middleware(middleware)

    async def broadcast(self, payload: Any, *, save_history: bool = False) -> int:
        """Send ``payload`` to every WebSocket connection of the app, in every process."""
        return await self.ws_router.broadcast(payload, save_history=save_history)

    async def broadcast_to(self, ids: Any, payload: Any) -> int:
        """Send ``payload`` to the connections whose ``ws.id`` is in ``ids``, anywhere."""
        return await self.ws_router.broadcast_to(ids, payload)

    def on(self, event: str) -> Callable[[F], F]:
        """Listen to ``connect``, ``disconnect`` or ``message`` on every connection."""
        return self.ws_router.on(event)

    def add_exception_handler(self, exc_type: type[BaseException], fn: ExceptionHandler) -> None:
        """Handle ``exc_type`` raised while serving a WebSocket connection."""
        self.ws_router.add_exception_handler(exc_type, fn)

    def exception_handler(self, exc_type: type[BaseException]) -> Callable[[F], F]:
        return self.ws_router.exception_handler(exc_type)

    # ------------------------------------------------------------------ HTTP routes

    def get(self, path: str, *, name: str | None = None) -> Callable[[F], F]:
        return self.router.get(path, name=name)

    def post(self, path: str, *, name: str | None = None) -> Callable[[F], F]:
        return self.router.post(path, name=name)

    def put(self, path: str, *, name: str | None = None) -> Callable[[F], F]:
        return self.router.put(path, name=name)

    def patch(self, path: str, *, name: str | None = None) -> Callable[[F], F]:
        return self.router.patch(path, name=name)

    def delete(self, path: str, *, name: str | None = None) -> Callable[[F], F]:
        return self.router.delete(path, name=name)

    def route(
        self, path: str, methods: Sequence[str] | None = None, *, name: str | None = None
    ) -> Callable[[F], F]:
        return self.router.route(path, methods=methods, name=name)

    def add_route(self, *args: Any, **kwargs: Any) -> Any:
        return self.router.add_route(*args, **kwargs)

    def mount_router(self, router: Router | WSRouter, prefix: str | None = None) -> None:
        """Mount an HTTP ``Router`` (or, for convenience, a ``WSRouter``)."""
        if isinstance(router, WSRouter):
            self.mount_ws_router(router, prefix)
        else:
            self.router.mount_router(router, prefix)

    def url_path_for(self, name: str, **params: Any) -> str:
        """The path of the HTTP or WebSocket route called ``name``."""
        try:
            return self.router.url_path_for(name, **params)
        except NoMatchFound:
            return self.ws_router.url_path_for(name, **params)

    # ------------------------------------------------------------------ serving

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self
        kind = scope["type"]
        if kind == "websocket":
            await self.ws_router.handle(scope, receive, send)
        elif kind == "http":
            await self._handle_http(scope, receive, send)
        elif kind == "lifespan":
            await self._handle_lifespan(scope, receive, send)
        else:
            raise ImproperlyConfigured(f"Unknown ASGI scope type {kind!r}.")

    async def _handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.router(scope, receive, guarded_send)
        except Exception:
            if not started:
                await JSONResponse({"detail": "Internal Server Error"}, status_code=500)(
                    scope, receive, send
                )
            # Let the server log it (and the TestClient re-raise it in tests).
            raise

    async def _not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        response: Response
        if self.ws_router.match(route_path(scope)) is not None:
            # RFC 9110 section 15.5.22: this path speaks WebSocket only.
            response = PlainTextResponse(
                "This path serves WebSocket connections: open it with a WebSocket client.",
                status_code=426,
                headers={"Upgrade": "websocket", "Connection": "Upgrade"},
            )
        else:
            response = JSONResponse({"detail": "Not Found"}, status_code=404)
        await response(scope, receive, send)

    def run(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        **uvicorn_options: Any,
    ) -> None:
        """Serve the app with uvicorn and nexios' WebSocket protocol, until stopped.

        The app's ``websocket_config`` (pings, message size, compression and the server
        limits) is passed on;
        any other keyword goes to ``uvicorn.Config`` (``log_level``, ``workers`` ...).
        """
        from nexios.server import run

        config = self.websocket_config
        run(
            self,
            host,
            port,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            max_message_size=config.max_message_size,
            compression=config.compression,
            limits=config.server_limits(),
            **uvicorn_options,
        )


Nexios = NexiosApp


def get_application(**options: Any) -> NexiosApp:
    """Create a :class:`NexiosApp`; the keyword arguments are the same."""
    return NexiosApp(**options)


async def _call_hook(hook: Hook) -> None:
    result = hook()
    if inspect.isawaitable(result):
        await result


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", repr(fn)))
