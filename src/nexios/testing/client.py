"""``TestClient``: run any ASGI app in process, over HTTP (httpx) and WebSocket.

Two forms:

- ``async with TestClient(app) as client:`` runs everything in the test's own event loop
  and gives an :class:`AsyncTestClient` (an ``httpx.AsyncClient``); ``await client.get(...)``.
- ``with TestClient(app) as client:`` runs the app on an event loop in a background thread
  (an anyio blocking portal) and ``client.get(...)`` is a plain call (``TestClient`` is an
  ``httpx.Client``).

Both run the ASGI lifespan on enter and exit. Without ``with``, a ``TestClient`` still
serves HTTP and WebSocket calls, without lifespan.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from types import TracebackType
from typing import Self, TypeAlias

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal

from nexios.testing._asgi import AppConfig, Lifespan, request_timeout, run_http
from nexios.testing.websocket import AsyncWebSocketSession, HeadersArg, WebSocketTestSession
from nexios.types import ASGIApp

__all__ = ["AsyncTestClient", "TestClient"]

_Primitive: TypeAlias = str | int | float | bool | None
CookiesArg: TypeAlias = httpx.Cookies | dict[str, str] | list[tuple[str, str]] | None
ParamsArg: TypeAlias = (
    httpx.QueryParams | Mapping[str, _Primitive] | list[tuple[str, _Primitive]] | str | None
)


def _response(
    request: httpx.Request, answer: tuple[int, list[tuple[bytes, bytes]], bytes]
) -> httpx.Response:
    status, headers, body = answer
    return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body), request=request)


class _AsyncTransport(httpx.AsyncBaseTransport):
    def __init__(self, config: AppConfig) -> None:
        self._config = config

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        answer = await run_http(self._config, request, body, request_timeout(request))
        return _response(request, answer)


class _PortalProvider:
    """One event-loop thread, shared by everything that needs it at the same time.

    The thread starts with the first user and stops with the last; ``with TestClient``
    is a user for its whole block, and so is each open WebSocket session.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._portal: BlockingPortal | None = None
        self._manager: AbstractContextManager[BlockingPortal] | None = None
        self._users = 0

    @contextmanager
    def acquire(self) -> Iterator[BlockingPortal]:
        with self._lock:
            if self._portal is None:
                manager = start_blocking_portal("asyncio")
                self._portal = manager.__enter__()
                self._manager = manager
            self._users += 1
            portal = self._portal
        try:
            yield portal
        finally:
            to_close = None
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    to_close, self._manager, self._portal = self._manager, None, None
            if to_close is not None:
                to_close.__exit__(None, None, None)


class _SyncTransport(httpx.BaseTransport):
    def __init__(self, config: AppConfig, portals: _PortalProvider) -> None:
        self._config = config
        self._portals = portals

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        timeout = request_timeout(request)
        with self._portals.acquire() as portal:
            answer = portal.call(run_http, self._config, request, body, timeout)
        return _response(request, answer)


class AsyncTestClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` wired to the app in process, plus ``websocket_connect``.

    ``async with`` runs the lifespan startup on enter and the shutdown on exit (and closes
    any WebSocket session still open). Usable without ``async with`` for plain HTTP and
    WebSocket calls (no lifespan).
    """

    def __init__(
        self,
        app: ASGIApp,
        base_url: str = "http://testserver",
        raise_server_exceptions: bool = True,
        timeout: float | None = 5.0,
        client: tuple[str, int] | None = ("testclient", 50000),
        *,
        root_path: str = "",
        headers: HeadersArg = None,
        cookies: CookiesArg = None,
        follow_redirects: bool = True,
    ) -> None:
        self.app = app
        self._config = AppConfig(app, raise_server_exceptions, timeout, client, root_path)
        self._lifespan: Lifespan | None = None
        self._ws_sessions: set[AsyncWebSocketSession] = set()
        super().__init__(
            base_url=base_url,
            transport=_AsyncTransport(self._config),
            timeout=timeout,
            headers=headers,
            cookies=cookies,
            follow_redirects=follow_redirects,
            trust_env=False,
        )

    @property
    def app_state(self) -> dict[str, object]:
        """The lifespan state (``scope["state"]`` of the lifespan scope)."""
        return self._config.state

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        lifespan = Lifespan(self._config)
        try:
            await lifespan.startup()
        except BaseException:
            await super().__aexit__(None, None, None)
            raise
        self._lifespan = lifespan
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        lifespan, self._lifespan = self._lifespan, None
        try:
            try:
                for session in list(self._ws_sessions):
                    await session.__aexit__(None, None, None)
            finally:
                if lifespan is not None:
                    await lifespan.shutdown()
        finally:
            await super().__aexit__(exc_type, exc, tb)

    def websocket_connect(
        self,
        url: str,
        subprotocols: Sequence[str] | None = None,
        headers: HeadersArg = None,
        *,
        params: ParamsArg = None,
        compression: bool = False,
        timeout: float | None = None,
    ) -> AsyncWebSocketSession:
        """A WebSocket session to ``url``: use it as ``async with ... as websocket:``.

        ``compression=True`` offers permessage-deflate; ``timeout`` overrides the client's
        for this session's waits.
        """
        request = self.build_request("GET", url, headers=headers, params=params)
        return AsyncWebSocketSession(
            self._config,
            request,
            subprotocols,
            compression=compression,
            timeout=timeout,
            registry=self._ws_sessions,
        )


class TestClient(httpx.Client):
    """Test any ASGI app in process: ``with TestClient(app) as client`` (blocking calls,
    the app on a background event loop) or ``async with TestClient(app) as client`` (an
    :class:`AsyncTestClient` on the test's loop).

    ``timeout`` (seconds, ``None`` for none) bounds every wait on the app: an HTTP
    answer, a WebSocket handshake or receive, a lifespan phase.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        app: ASGIApp,
        base_url: str = "http://testserver",
        raise_server_exceptions: bool = True,
        timeout: float | None = 5.0,
        client: tuple[str, int] | None = ("testclient", 50000),
        *,
        root_path: str = "",
        headers: HeadersArg = None,
        cookies: CookiesArg = None,
        follow_redirects: bool = True,
    ) -> None:
        self.app = app
        self._settings = (base_url, raise_server_exceptions, timeout, client, root_path)
        self._config = AppConfig(app, raise_server_exceptions, timeout, client, root_path)
        self._portals = _PortalProvider()
        self._open: ExitStack | None = None
        self._portal: BlockingPortal | None = None
        self._lifespan: Lifespan | None = None
        self._ws_sessions: set[WebSocketTestSession] = set()
        self._async_client: AsyncTestClient | None = None
        super().__init__(
            base_url=base_url,
            transport=_SyncTransport(self._config, self._portals),
            timeout=timeout,
            headers=headers,
            cookies=cookies,
            follow_redirects=follow_redirects,
            trust_env=False,
        )

    @property
    def app_state(self) -> dict[str, object]:
        """The lifespan state of the sync form (``scope["state"]`` of the lifespan scope)."""
        return self._config.state

    # ---------------------------------------------------------------- sync form

    def __enter__(self) -> Self:
        if self._open is not None:
            raise RuntimeError("This TestClient is already open.")
        stack = ExitStack()
        portal = stack.enter_context(self._portals.acquire())
        lifespan = Lifespan(self._config)
        try:
            portal.call(lifespan.startup)
        except BaseException:
            stack.close()
            raise
        self._open, self._portal, self._lifespan = stack, portal, lifespan
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        stack, portal, lifespan = self._open, self._portal, self._lifespan
        self._open = self._portal = self._lifespan = None
        if stack is None or portal is None or lifespan is None:
            return
        with stack:
            try:
                for session in list(self._ws_sessions):
                    session.__exit__(None, None, None)
            finally:
                portal.call(lifespan.shutdown)

    # --------------------------------------------------------------- async form

    async def __aenter__(self) -> AsyncTestClient:
        if self._async_client is not None:
            raise RuntimeError("This TestClient is already open.")
        base_url, raise_server_exceptions, timeout, client, root_path = self._settings
        async_client = AsyncTestClient(
            self.app,
            base_url=base_url,
            raise_server_exceptions=raise_server_exceptions,
            timeout=timeout,
            client=client,
            root_path=root_path,
            headers=self.headers,
            cookies=self.cookies,
            follow_redirects=self.follow_redirects,
        )
        await async_client.__aenter__()
        self._async_client = async_client
        return async_client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        async_client, self._async_client = self._async_client, None
        if async_client is not None:
            await async_client.__aexit__(exc_type, exc, tb)

    # ---------------------------------------------------------------- WebSocket

    def websocket_connect(
        self,
        url: str,
        subprotocols: Sequence[str] | None = None,
        headers: HeadersArg = None,
        *,
        params: ParamsArg = None,
        compression: bool = False,
        timeout: float | None = None,
    ) -> WebSocketTestSession:
        """A WebSocket session to ``url``: use it as ``with ... as websocket:``.

        ``compression=True`` offers permessage-deflate; ``timeout`` overrides the client's
        for this session's waits.
        """
        request = self.build_request("GET", url, headers=headers, params=params)
        session = AsyncWebSocketSession(
            self._config, request, subprotocols, compression=compression, timeout=timeout
        )
        return WebSocketTestSession(session, self._portals.acquire, self._ws_sessions)
