"""HTTP routes and routers.

A ``Route`` is a path, the methods it answers and a handler; a ``Router`` holds routes
and mounted routers, and is the ASGI app that picks one for each request. Everything that
can be worked out once (the path's regular expression, the handler's signature, whether
it is async) is worked out when the route is added.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, overload

from nexios.exceptions import HTTPException, ImproperlyConfigured, NoMatchFound
from nexios.http.request import Request
from nexios.http.response import (
    JSONResponse,
    NexiosResponse,
    Response,
    http_exception_response,
)
from nexios.routing.paths import CompiledPath, compile_path
from nexios.types import ASGIApp, Receive, Scope, Send

__all__ = ["Route", "Router"]

Handler = Callable[..., Any]
H = TypeVar("H", bound=Handler)
Match = tuple["Route", dict[str, Any]]

_NOT_FOUND = JSONResponse({"detail": "Not Found"}, 404)


def _takes_response(handler: Handler) -> bool:
    """True for ``h(request, response)``, False for ``h(request)``; anything else is refused."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # some builtins and C callables have none
        return True
    params = signature.parameters.values()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    required_keywords = [p for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if required_keywords or len(required) > 2 or not (positional or varargs):
        name = getattr(handler, "__qualname__", repr(handler))
        raise ImproperlyConfigured(
            f"Handler {name}{signature} must take (request) or (request, response)."
        )
    return varargs or len(positional) >= 2


def _is_async(handler: Handler) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    # An object whose class defines ``async def __call__``.
    return inspect.iscoroutinefunction(type(handler).__call__)


class Route:
    """``handler`` answers ``methods`` (default ``["GET"]``; HEAD comes with GET) on ``path``.

    The handler is ``async def h(request, response)``, ``async def h(request)`` or the
    same as a plain ``def`` (run in a worker thread). What it returns is sent: a
    ``Response`` or the builder as is; a dict or list as JSON; a str as text/plain; bytes
    as application/octet-stream; ``None``: the builder as it stands.

    Called as an ASGI app, a route runs its handler without checking the method or the
    path: that is the router's work.
    """

    def __init__(
        self,
        path: str,
        handler: Handler,
        methods: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        if not callable(handler):
            raise ImproperlyConfigured(
                f"The handler of route {path!r} is not callable: {handler!r}."
            )
        if isinstance(methods, str):
            raise ImproperlyConfigured(
                f"methods must be a list of names, like [{methods!r}], not the string {methods!r}."
            )
        self.path = path
        self.handler = handler
        self.name = name if name is not None else getattr(handler, "__name__", None)
        allowed = {method.upper() for method in (methods or ["GET"])}
        if "GET" in allowed:
            allowed.add("HEAD")
        self.methods = frozenset(allowed)
        self.compiled = compile_path(path)
        self._takes_response = _takes_response(handler)
        self._is_async = _is_async(handler)

    def match(self, path: str) -> dict[str, Any] | None:
        """The converted path parameters if ``path`` is this route's path, else None."""
        return self.compiled.match(path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        builder = NexiosResponse() if self._takes_response else None
        args = (request, builder) if builder is not None else (request,)
        response: Response | NexiosResponse
        try:
            if self._is_async:
                result = await self.handler(*args)
            else:
                result = await asyncio.to_thread(self.handler, *args)
            response = self._to_response(result, builder)
        except HTTPException as exc:
            response = http_exception_response(exc)
        try:
            await response(scope, receive, send)
        except FileNotFoundError:
            # Raised by FileResponse before it sends anything.
            await _NOT_FOUND(scope, receive, send)

    def _to_response(
        self, result: Any, builder: NexiosResponse | None
    ) -> Response | NexiosResponse:
        if isinstance(result, Response | NexiosResponse):
            return result
        if builder is None:
            builder = NexiosResponse()
        if result is None:
            return builder
        if isinstance(result, dict | list):
            return builder.json(result)
        if isinstance(result, str):
            return builder.text(result)
        if isinstance(result, bytes | bytearray | memoryview):
            return builder.binary(bytes(result))
        name = getattr(self.handler, "__qualname__", repr(self.handler))
        raise TypeError(
            f"Handler {name} returned a {type(result).__name__}: return a Response, the "
            "response builder, a dict, a list, a str, bytes or None."
        )

    def __repr__(self) -> str:
        methods = ", ".join(sorted(self.methods))
        return f"{type(self).__name__}(path={self.path!r}, methods=[{methods}], name={self.name!r})"


class _Mount:
    __slots__ = ("prefix", "router")

    def __init__(self, prefix: CompiledPath, router: Router) -> None:
        self.prefix = prefix
        self.router = router


def _route_path(scope: Scope) -> str:
    """The path to route on: ``scope["path"]`` less the ``root_path`` the server put in it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


class Router:
    """Routes and mounted routers; an ASGI app for ``http`` scopes.

    The first route, in the order they were added (a mounted router's routes in its
    place), whose path and method both match answers. A path that matches with
    another method gets a 405 with ``Allow``; no match: ``not_found``, an ASGI app that
    you may replace (default: a JSON 404). Only the router the server calls uses its
    ``not_found``: mounted routers are searched, not called.

    A route's full path is its router's prefix followed by its own path; where the prefix
    is the whole path, a route ``"/"`` answers too (``/items`` as well as ``/items/``).
    """

    def __init__(self, prefix: str = "", routes: Sequence[Route] | None = None) -> None:
        self._prefix = prefix.rstrip("/")
        self._compiled_prefix = compile_path(prefix, prefix=True) if self._prefix else None
        self._entries: list[Route | _Mount] = []
        self.not_found: ASGIApp = _NOT_FOUND
        for route in routes or ():
            self.add_route(route)

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def routes(self) -> list[Route]:
        """This router's own routes (not those of the routers mounted on it)."""
        return [entry for entry in self._entries if isinstance(entry, Route)]

    # -- building ------------------------------------------------------------------------

    @overload
    def add_route(self, path: Route) -> Route: ...
    @overload
    def add_route(
        self,
        path: str,
        handler: Handler,
        methods: Sequence[str] | None = None,
        name: str | None = None,
    ) -> Route: ...
    def add_route(
        self,
        path: str | Route,
        handler: Handler | None = None,
        methods: Sequence[str] | None = None,
        name: str | None = None,
    ) -> Route:
        """Add ``add_route(Route(...))`` or ``add_route(path, handler, methods, name)``."""
        if isinstance(path, Route):
            if handler is not None or methods is not None or name is not None:
                raise TypeError("add_route(route) takes a Route alone: set the rest on the Route.")
            route = path
        elif handler is None:
            raise TypeError(f"add_route({path!r}) needs a handler: add_route(path, handler).")
        else:
            route = Route(path, handler, methods, name)
        self._entries.append(route)
        return route

    def route(
        self, path: str, methods: Sequence[str] | None = None, name: str | None = None
    ) -> Callable[[H], H]:
        """Decorator: add the function as the handler of ``path`` for ``methods``."""

        def register(handler: H) -> H:
            self.add_route(Route(path, handler, methods, name))
            return handler

        return register

    def get(self, path: str, name: str | None = None) -> Callable[[H], H]:
        return self.route(path, ["GET"], name)

    def post(self, path: str, name: str | None = None) -> Callable[[H], H]:
        return self.route(path, ["POST"], name)

    def put(self, path: str, name: str | None = None) -> Callable[[H], H]:
        return self.route(path, ["PUT"], name)

    def patch(self, path: str, name: str | None = None) -> Callable[[H], H]:
        return self.route(path, ["PATCH"], name)

    def delete(self, path: str, name: str | None = None) -> Callable[[H], H]:
        return self.route(path, ["DELETE"], name)

    def options(self, path: str, name: str | None = None) -> Callable[[H], H]:
        return self.route(path, ["OPTIONS"], name)

    def head(self, path: str, name: str | None = None) -> Callable[[H], H]:
        return self.route(path, ["HEAD"], name)

    def mount_router(self, router: Router, prefix: str | None = None) -> None:
        """Serve ``router``'s routes under ``prefix``, or under its own prefix if None.

        The router is kept, not copied: routes added to it later are served too.
        """
        if router is self or self in router._descendants():
            raise ImproperlyConfigured("Mounting this router would make a cycle of routers.")
        effective = router.prefix if prefix is None else prefix
        self._entries.append(_Mount(compile_path(effective, prefix=True), router))

    def _descendants(self) -> Iterator[Router]:
        for entry in self._entries:
            if isinstance(entry, _Mount):
                yield entry.router
                yield from entry.router._descendants()

    # -- matching ------------------------------------------------------------------------

    def _candidates(self, path: str) -> Iterator[Match]:
        """Every route whose path matches ``path`` (taken after this router's prefix)."""
        for entry in self._entries:
            if isinstance(entry, Route):
                params = entry.compiled.match(path)
                if params is not None:
                    yield entry, params
            else:
                yield from _under(entry.prefix, entry.router, path)

    def _resolve(self, path: str) -> Iterator[Match]:
        if self._compiled_prefix is None:
            return self._candidates(path)
        return _under(self._compiled_prefix, self, path)

    def _lookup(self, path: str, method: str) -> tuple[Match | None, set[str]]:
        allowed: set[str] = set()
        for route, params in self._resolve(path):
            if method in route.methods:
                return (route, params), allowed
            allowed |= route.methods
        return None, allowed

    def match(self, scope: Scope) -> Match | None:
        """The route that would answer this request, and its path parameters, or None."""
        return self._lookup(_route_path(scope), scope["method"])[0]

    def allowed_methods(self, path: str) -> frozenset[str]:
        """The methods some route answers on ``path`` (empty if no route has that path)."""
        return frozenset(m for route, _ in self._resolve(path) for m in route.methods)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError(
                f"Router serves 'http' scopes only, not {scope['type']!r}: "
                "run it inside the application, which routes WebSockets and lifespan."
            )
        found, allowed = self._lookup(_route_path(scope), scope["method"])
        if found is not None:
            route, params = found
            scope["path_params"] = params
            await route(scope, receive, send)
        elif allowed:
            exc = HTTPException(405, headers={"Allow": ", ".join(sorted(allowed))})
            await http_exception_response(exc)(scope, receive, send)
        else:
            await self.not_found(scope, receive, send)

    # -- reversing -----------------------------------------------------------------------

    def _named(self, name: str) -> Iterator[tuple[list[CompiledPath], Route]]:
        for entry in self._entries:
            if isinstance(entry, Route):
                if entry.name == name:
                    yield [entry.compiled], entry
            else:
                for chain, route in entry.router._named(name):
                    yield [entry.prefix, *chain], route

    def url_path_for(self, name: str, /, **params: Any) -> str:
        """The path of the route called ``name``, searched in this and the mounted routers.

        ``params`` must be exactly the route's path parameters, its prefixes' included.
        """
        own = [self._compiled_prefix] if self._compiled_prefix is not None else []
        wanted: list[str] = []
        for chain, _route in self._named(name):
            full = own + chain
            needed = {param for compiled in full for param in compiled.convertors}
            if needed == params.keys():
                return "".join(compiled.format_path(params) for compiled in full)
            wanted.append(", ".join(sorted(needed)) or "no parameters")
        if not wanted:
            raise NoMatchFound(f"No route named {name!r} in this router or those mounted on it.")
        raise NoMatchFound(
            f"Route {name!r} takes ({'; or '.join(wanted)}), "
            f"not ({', '.join(sorted(params)) or 'no parameters'})."
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prefix={self._prefix!r}, entries={len(self._entries)})"


def _under(prefix: CompiledPath, router: Router, path: str) -> Iterator[Match]:
    """The routes of ``router`` that match ``path`` once ``prefix`` is taken off its start."""
    try:
        found = prefix.match_prefix(path)
    except ValueError:  # a convertor refused the segment
        return
    if found is None:
        return
    prefix_params, rest = found
    for route, params in router._candidates(rest):
        yield route, ({**prefix_params, **params} if prefix_params else params)
    if rest == "":
        for route, params in router._candidates("/"):
            yield route, ({**prefix_params, **params} if prefix_params else params)
