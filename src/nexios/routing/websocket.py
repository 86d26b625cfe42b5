"""WebSocket routing: ``WebsocketRoutes`` (one path, one handler) and ``WSRouter``.

A connection is matched once, at the handshake. The router that matched it, and every
router it is mounted under, contribute their middleware (outermost first), their event
listeners and their exception handlers (innermost first) to that one connection.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from nexios.config import WebSocketConfig
from nexios.exceptions import (
    ImproperlyConfigured,
    NoMatchFound,
    WebSocketDisconnect,
    WebSocketException,
)
from nexios.routing.paths import CompiledPath, compile_path
from nexios.server.extensions import HTTP_RESPONSE_EXTENSION
from nexios.types import Receive, Scope, Send
from nexios.websockets.base import WebSocket, WebSocketState
from nexios.websockets.consumers import WebSocketConsumer, path_of

if TYPE_CHECKING:
    from nexios.channels.layer import ChannelLayer
    from nexios.websockets.guard import ConnectionGuard

__all__ = ["WSRouter", "WebSocketRoute", "WebsocketRoutes", "route_path"]

logger = logging.getLogger("nexios.websockets")

Handler: TypeAlias = Callable[..., Awaitable[Any]] | WebSocketConsumer | type[WebSocketConsumer]
Middleware: TypeAlias = Callable[..., Awaitable[Any]]
ExceptionHandler: TypeAlias = Callable[[WebSocket, Exception], Awaitable[Any]]
Listener: TypeAlias = Callable[..., Awaitable[Any]]
F = TypeVar("F", bound=Callable[..., Any])

EVENTS = ("connect", "disconnect", "message")


def route_path(scope: Scope) -> str:
    """The path to route on: the scope's path without the app's ``root_path``."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def _check_middleware(middleware: Any) -> None:
    """A middleware is ``async def mw(ws, call_next)`` or an ASGI middleware class."""
    if inspect.isclass(middleware):
        return
    _check_async(middleware, "WebSocket middleware")


def _check_async(fn: Callable[..., Any], what: str) -> None:
    target = getattr(fn, "__call__", None) if not inspect.isfunction(fn) else fn  # noqa: B004
    if not (inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(target)):
        name = getattr(fn, "__qualname__", repr(fn))
        raise ImproperlyConfigured(f"{what} {name} must be an async function (async def).")


class WebsocketRoutes:
    """One WebSocket path and the handler that serves it.

    The handler is ``async def handler(ws)``; it may also ask for path parameters by
    name (``async def room(ws, room_id: int)``), which arrive converted.
    """

    def __init__(
        self,
        path: str,
        handler: Handler,
        name: str | None = None,
        middleware: Sequence[Middleware] | None = None,
        config: WebSocketConfig | None = None,
    ) -> None:
        if not path.startswith("/"):
            raise ImproperlyConfigured(f"WebSocket route paths must start with '/': got {path!r}.")
        # Per-route settings (outbox size, slow-consumer policy); None: the app's.
        self.config = config
        self.path = path
        self.compiled: CompiledPath = compile_path(path)
        if name is None:
            name = getattr(handler, "__name__", None) or type(handler).__name__
        self.name = name
        self.middleware: list[Middleware] = list(middleware or [])
        for mw in self.middleware:
            _check_middleware(mw)
        if isinstance(handler, WebSocketConsumer | type):
            # A consumer's own middleware runs after the route's.
            self.middleware.extend(getattr(handler, "middleware", ()))
        self.handler = handler
        self.endpoint = _endpoint(handler)

    def url_path_for(self, name: str, **params: Any) -> str | None:
        if name != self.name or set(params) != set(self.compiled.convertors):
            return None
        return self.compiled.format_path(params)

    def __repr__(self) -> str:
        return f"WebsocketRoutes({self.path!r}, name={self.name!r})"


WebSocketRoute = WebsocketRoutes


def _endpoint(handler: Handler) -> Callable[[WebSocket], Awaitable[Any]]:
    """Adapt a handler to ``endpoint(ws)``, once, at registration."""
    if isinstance(handler, WebSocketConsumer):
        return handler.serve  # one instance serves every connection
    if isinstance(handler, type) and issubclass(handler, WebSocketConsumer):
        return handler.as_endpoint()  # one instance per connection
    if isinstance(handler, type):
        raise ImproperlyConfigured(
            f"{handler.__name__} is a class but not a WebSocketConsumer: subclass "
            "nexios.websockets.consumers.WebSocketConsumer, or register an async function."
        )
    _check_async(handler, "WebSocket handler")
    try:
        signature = inspect.signature(handler, eval_str=True)
    except NameError:  # an annotation that names something not importable here
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return handler
    parameters = list(signature.parameters.values())[1:]
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    wanted = tuple(
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )
    if not wanted and not takes_all:
        return handler
    # A parameter the path gives as text but the handler annotates as int, float or UUID
    # is converted; a value that does not convert makes the path not found (404).
    conversions = {
        p.name: _CONVERT_BY_ANNOTATION[p.annotation]
        for p in parameters
        if p.annotation in _CONVERT_BY_ANNOTATION
    }

    async def with_params(ws: WebSocket) -> Any:
        params = ws.path_params
        if takes_all:
            return await handler(ws, **params)
        kwargs = {name: params[name] for name in wanted if name in params}
        for name, convert in conversions.items():
            value = kwargs.get(name)
            if isinstance(value, str):
                try:
                    kwargs[name] = convert(value)
                except ValueError:
                    await _refuse(ws, 404, "Not Found")
                    return None
        return await handler(ws, **kwargs)

    return with_params


_CONVERT_BY_ANNOTATION: dict[Any, Callable[[str], Any]] = {
    int: int,
    float: float,
    uuid.UUID: uuid.UUID,
}


class _Mount:
    __slots__ = ("prefix", "router")

    def __init__(self, prefix: str, router: WSRouter) -> None:
        self.prefix: CompiledPath = compile_path(prefix, prefix=True)
        self.router = router


class WSRouter:
    """A group of WebSocket routes under a common prefix, with its own middleware,
    event listeners and exception handlers. Routers nest; a router is also an ASGI app.
    """

    def __init__(
        self,
        routes: Sequence[WebsocketRoutes] | None = None,
        prefix: str = "",
        middleware: Sequence[Middleware] | None = None,
        name: str | None = None,
    ) -> None:
        if isinstance(routes, str):
            raise ImproperlyConfigured(
                f"WSRouter's first argument is a list of routes; for a prefix write "
                f"WSRouter(prefix={routes!r})."
            )
        if prefix and not prefix.startswith("/"):
            raise ImproperlyConfigured(f"A router prefix must start with '/': got {prefix!r}.")
        self.prefix = prefix.rstrip("/")
        self.name = name
        self.routes: list[WebsocketRoutes] = list(routes or [])
        self.mounts: list[_Mount] = []
        self.ws_middleware: list[Middleware] = []
        for mw in middleware or ():
            self.add_ws_middleware(mw)
        self.listeners: dict[str, list[Listener]] = {}
        self.exception_handlers: dict[type[BaseException], ExceptionHandler] = {}
        self._own_prefix = compile_path(self.prefix, prefix=True)
        # Set when the router is mounted on an app: its layer, and the group every
        # connection it serves (directly or through a mounted router) belongs to.
        self.channels: ChannelLayer | None = None
        self.channel_group: str | None = None
        # Set on an app's root router: the app's settings, and its admission guard.
        self.config: WebSocketConfig | None = None
        self.guard: ConnectionGuard | None = None

    # ------------------------------------------------------------------ registration

    def add_ws_route(
        self,
        route: WebsocketRoutes | str | WebSocketConsumer | type[WebSocketConsumer],
        handler: Handler | None = None,
        *,
        name: str | None = None,
        middleware: Sequence[Middleware] | None = None,
        config: WebSocketConfig | None = None,
    ) -> WebsocketRoutes:
        """Add ``WebsocketRoutes(...)``, a path and its handler, or a consumer.

        A consumer (class or instance) given alone is served on its ``path`` attribute.
        """
        if isinstance(route, WebSocketConsumer) or (
            isinstance(route, type) and issubclass(route, WebSocketConsumer)
        ):
            route = WebsocketRoutes(
                path_of(route), route, name=name, middleware=middleware, config=config
            )
        elif isinstance(route, str):
            if handler is None:
                raise ImproperlyConfigured(
                    f"add_ws_route({route!r}) needs a handler: add_ws_route(path, handler)."
                )
            route = WebsocketRoutes(route, handler, name=name, middleware=middleware, config=config)
        elif not isinstance(route, WebsocketRoutes):
            raise ImproperlyConfigured(
                "add_ws_route takes WebsocketRoutes(path, handler) or (path, handler); "
                f"got {type(route).__name__}. A consumer class is added with "
                "Consumer.as_route(path)."
            )
        self.routes.append(route)
        return route

    def ws_route(
        self,
        path: str,
        *,
        name: str | None = None,
        middleware: Sequence[Middleware] | None = None,
        config: WebSocketConfig | None = None,
    ) -> Callable[[F], F]:
        """Decorator: serve ``path`` with the decorated async function."""

        def register(handler: F) -> F:
            self.add_ws_route(path, handler, name=name, middleware=middleware, config=config)
            return handler

        return register

    ws = ws_route
    websocket_route = ws_route

    def mount_router(self, router: WSRouter, prefix: str | None = None) -> None:
        """Serve ``router`` under ``prefix`` (default: the router's own prefix).

        The router is kept by reference: routes added to it later are served too.
        """
        if router is self:
            raise ImproperlyConfigured("A router cannot be mounted inside itself.")
        if prefix is not None and prefix and not prefix.startswith("/"):
            raise ImproperlyConfigured(f"A mount prefix must start with '/': got {prefix!r}.")
        self.mounts.append(_Mount(router.prefix if prefix is None else prefix, router))
        if self.channels is not None and self.channel_group is not None:
            router.bind_channels(self.channels, f"{self.channel_group}.{len(self.mounts) - 1}")

    def bind_channels(self, layer: ChannelLayer, group: str) -> None:
        """Give this router (and the routers mounted on it) the app's channel layer.

        ``group`` names the router across processes; it derives from the mount order,
        which is the same in every process that runs the same code.
        """
        if self.channels is not None:
            return  # mounted twice: the first name stands
        self.channels = layer
        self.channel_group = group
        for index, mount in enumerate(self.mounts):
            mount.router.bind_channels(layer, f"{group}.{index}")

    def _require_channels(self) -> ChannelLayer:
        if self.channels is None:
            raise ImproperlyConfigured(
                "This router is not mounted on an app, so it has no channel layer: call "
                "app.mount_ws_router(router) before broadcasting."
            )
        return self.channels

    async def broadcast(self, payload: Any, *, save_history: bool = False) -> int:
        """Send ``payload`` to every connection this router's routes serve, in every
        process. str goes as text, bytes as binary, anything else as JSON. Returns how
        many local connections it reaches, an int with the message's ``position`` in the
        router's group log (see ``ChannelLayer.publish``)."""
        layer = self._require_channels()
        assert self.channel_group is not None
        return await layer.publish(self.channel_group, payload, save_history=save_history)

    async def broadcast_to(self, ids: Iterable[str], payload: Any) -> int:
        """Send ``payload`` to the connections whose ``ws.id`` is in ``ids``, wherever
        they are connected. Returns how many local connections it was queued for."""
        return await self._require_channels().send_to(ids, payload)

    mount_ws_router = mount_router

    def add_ws_middleware(self, middleware: Middleware) -> None:
        """Run ``middleware(ws, call_next)`` for every connection this router serves.

        An ASGI middleware class works too: nexios builds it as ``cls(app)`` and runs it
        as an ASGI app around the rest of the chain.
        """
        _check_middleware(middleware)
        self.ws_middleware.append(middleware)

    def middleware(self, fn: F) -> F:
        """Decorator form of :meth:`add_ws_middleware`."""
        self.add_ws_middleware(fn)
        return fn

    def on(self, event: str) -> Callable[[F], F]:
        """Decorator: call the function on ``connect``, ``disconnect`` or ``message``."""
        if event not in EVENTS:
            raise ImproperlyConfigured(
                f"Unknown WebSocket event {event!r}: use one of {', '.join(EVENTS)}."
            )

        def register(fn: F) -> F:
            _check_async(fn, f"The {event!r} listener")
            self.listeners.setdefault(event, []).append(fn)
            return fn

        return register

    def exception_handler(self, exc_type: type[BaseException]) -> Callable[[F], F]:
        """Decorator: handle ``exc_type`` raised while serving a connection."""

        def register(fn: F) -> F:
            self.add_exception_handler(exc_type, fn)
            return fn

        return register

    def add_exception_handler(self, exc_type: type[BaseException], fn: ExceptionHandler) -> None:
        _check_async(fn, "Exception handler")
        self.exception_handlers[exc_type] = fn

    # ------------------------------------------------------------------ matching

    def match(self, path: str) -> tuple[WebsocketRoutes, dict[str, Any], list[WSRouter]] | None:
        """Match a full path, with this router's own prefix applied."""
        found = self._own_prefix.match_prefix(path)
        if found is None:
            return None
        params, rest = found
        return self._match_inner(rest or "/", params, [self])

    def _match_inner(
        self, path: str, params: dict[str, Any], chain: list[WSRouter]
    ) -> tuple[WebsocketRoutes, dict[str, Any], list[WSRouter]] | None:
        for route in self.routes:
            route_params = route.compiled.match(path)
            if route_params is not None:
                return route, {**params, **route_params}, chain
        for mount in self.mounts:
            found = mount.prefix.match_prefix(path)
            if found is not None:
                mount_params, rest = found
                result = mount.router._match_inner(
                    rest or "/", {**params, **mount_params}, [*chain, mount.router]
                )
                if result is not None:
                    return result
        return None

    def url_path_for(self, name: str, **params: Any) -> str:
        path = self._url_path_for(name, params)
        if path is None:
            given = ", ".join(sorted(params)) or "no parameters"
            raise NoMatchFound(f"No WebSocket route named {name!r} takes {given}.")
        return self.prefix + path

    def _url_path_for(self, name: str, params: dict[str, Any]) -> str | None:
        for route in self.routes:
            path = route.url_path_for(name, **params)
            if path is not None:
                return path
        for mount in self.mounts:
            names = set(mount.prefix.convertors)
            inner = mount.router._url_path_for(
                name, {k: v for k, v in params.items() if k not in names}
            )
            if inner is not None and names <= set(params):
                head = mount.prefix.format_path({k: params[k] for k in names})
                return head + inner
        return None

    def iter_routes(self) -> list[tuple[str, WebsocketRoutes]]:
        """Every route this router serves, with its full path."""
        found: list[tuple[str, WebsocketRoutes]] = []

        def walk(router: WSRouter, prefix: str) -> None:
            for route in router.routes:
                found.append((prefix + route.path, route))
            for mount in router.mounts:
                walk(mount.router, prefix + mount.prefix.template)

        walk(self, self.prefix)
        return found

    # ------------------------------------------------------------------ serving

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise ImproperlyConfigured(
                f"WSRouter serves 'websocket' scopes only, got {scope['type']!r}: "
                "mount it on a NexiosApp with app.mount_ws_router(router)."
            )
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.match(route_path(scope))
        if found is None:
            await _refuse(WebSocket(scope, receive, send), 404, "Not Found")
            return
        route, params, chain = found
        scope["path_params"] = params
        ws = WebSocket(scope, receive, send)
        await serve(ws, route, chain)

    def __repr__(self) -> str:
        return f"WSRouter(prefix={self.prefix!r}, routes={len(self.routes)})"


async def _refuse(ws: WebSocket, status: int, reason: str) -> None:
    """Refuse the handshake: an HTTP response where the server can send one."""
    if HTTP_RESPONSE_EXTENSION in (ws.scope.get("extensions") or {}):
        await ws.send_denial_response(status, reason)
    else:
        await ws.close(1013 if status == 503 else 1008, reason)


_DEFAULT_CONFIG = WebSocketConfig()


async def serve(ws: WebSocket, route: WebsocketRoutes, chain: list[WSRouter]) -> None:
    """Serve one connection: middleware, handler, events, exception handling, cleanup."""
    middleware = [mw for router in chain for mw in router.ws_middleware]
    middleware.extend(route.middleware)
    listeners = _collect_listeners(chain)
    if listeners:
        ws.listeners = listeners
    root = chain[0]
    config = route.config or root.config or _DEFAULT_CONFIG
    guard = root.guard
    if guard is not None:
        refusal = guard.refusal(ws, config)
        if refusal is not None:
            await _refuse(ws, *refusal)
            return
        guard.enter(ws)
        ws._watch = guard.watch(ws, config)
    layer = root.channels
    if layer is not None:
        ws.channels = layer
        ws._before_accept = partial(_register, layer, config, chain)
    call: Callable[[], Awaitable[Any]] = partial(route.endpoint, ws)
    for mw in reversed(middleware):
        call = _wrap(mw, ws, call)
    try:
        await call()
    except Exception as exc:
        await _handle_exception(ws, exc, chain)
    finally:
        await _finish(ws)
        if guard is not None:
            guard.leave(ws)
            if ws._watch is not None:
                ws._watch.stop()
        if layer is not None:
            await layer.unregister(ws)
        if listeners and ws.was_accepted:
            await ws.emit("disconnect")


async def _register(
    layer: ChannelLayer, config: WebSocketConfig, chain: list[WSRouter], ws: WebSocket
) -> Callable[[], None]:
    """Before the accept goes out: the connection joins its routers' groups, so that a
    client that sees the handshake complete is already reachable by broadcasts."""
    outbox = await layer.register(
        ws,
        [router.channel_group for router in chain if router.channel_group is not None],
        outbox_size=config.outbox_size,
        slow_consumer=config.slow_consumer,
        held=True,
    )
    return outbox.release


def _wrap(
    mw: Middleware, ws: WebSocket, inner: Callable[[], Awaitable[Any]]
) -> Callable[[], Awaitable[Any]]:
    if inspect.isclass(mw):
        return _wrap_asgi(mw, ws, inner)
    called = False

    async def call_next(_ws: WebSocket | None = None) -> Any:
        nonlocal called
        if called:
            raise ImproperlyConfigured(
                f"Middleware {getattr(mw, '__qualname__', mw)!r} called call_next twice."
            )
        called = True
        return await inner()

    async def run() -> Any:
        return await mw(ws, call_next)

    return run


def _wrap_asgi(
    cls: type[Any], ws: WebSocket, inner: Callable[[], Awaitable[Any]]
) -> Callable[[], Awaitable[Any]]:
    """Run an ASGI middleware class around the rest of the chain."""

    async def downstream(scope: Scope, receive: Receive, send: Send) -> None:
        ws.rebind(scope, receive, send)
        await inner()

    async def run() -> None:
        await cls(downstream)(ws.scope, ws._receive, ws._send)

    return run


def _collect_listeners(chain: list[WSRouter]) -> dict[str, list[Listener]]:
    listeners: dict[str, list[Listener]] = {}
    for router in chain:
        for event, fns in router.listeners.items():
            listeners.setdefault(event, []).extend(fns)
    return listeners


def _find_handler(exc: BaseException, chain: list[WSRouter]) -> ExceptionHandler | None:
    for cls in type(exc).__mro__:
        for router in reversed(chain):
            handler = router.exception_handlers.get(cls)
            if handler is not None:
                return handler
    return None


async def _handle_exception(ws: WebSocket, exc: Exception, chain: list[WSRouter]) -> None:
    handler = _find_handler(exc, chain)
    if handler is not None:
        try:
            await handler(ws, exc)
            return
        except Exception as handler_exc:
            logger.exception("WebSocket exception handler failed while handling %r", exc)
            exc = handler_exc
    if isinstance(exc, WebSocketDisconnect):
        return
    if isinstance(exc, WebSocketException):
        await _close_quietly(ws, exc.code, exc.reason)
        return
    logger.error("Exception in WebSocket handler for %s", ws.scope.get("path"), exc_info=exc)
    # 1011: the server met an unexpected condition. The reason leaks nothing of it.
    await _close_quietly(ws, 1011, "Internal error")


async def _close_quietly(ws: WebSocket, code: int, reason: str) -> None:
    if ws.connection_state is WebSocketState.DISCONNECTED:
        return
    try:
        await ws.close(code, reason)
    except Exception:  # the transport is gone; nothing more to tell the peer
        logger.debug("Could not close WebSocket %s", ws.scope.get("path"), exc_info=True)


async def _finish(ws: WebSocket) -> None:
    """A handler that returned without closing: close (1000) or refuse the handshake."""
    state = ws.application_state
    if state is WebSocketState.CONNECTED and ws.client_state is not WebSocketState.DISCONNECTED:
        await _close_quietly(ws, 1000, "")
    elif state is WebSocketState.CONNECTING:
        await _close_quietly(ws, 1008, "Handshake not accepted")
