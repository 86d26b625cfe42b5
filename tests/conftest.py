"""Shared fixtures: a real nexios server (uvicorn) in the test's event loop, and Redis.

``live_server(app, **settings)`` is an async context manager::

    async def test_echo(live_server: LiveServerFactory) -> None:
        async with live_server(app) as server, connect(server.ws + "/ws") as client:
            ...

It serves *app* as ``NexiosApp.run()`` does: ``nexios.server.make_config`` with the app's
``websocket_config`` (ping interval and timeout, message size, compression), on a free
port of 127.0.0.1 that the OS picks (port 0: no race with other processes). *settings*
override ``make_config``'s arguments (``ping_interval=0.2``, ``log_level="info"`` ...).
The server runs as a task of the test's event loop; the block is entered once uvicorn
has started (lifespan startup done, socket listening) and, on exit, waits for uvicorn to
shut down (lifespan shutdown done). A server that does not start raises
`LiveServerError` with what uvicorn logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import pytest
import uvicorn

from _redis import PrivateRedis, require_redis_server
from _servers import in_ci
from nexios.application import NexiosApp
from nexios.config import ServerLimits
from nexios.server import make_config

STARTUP_TIMEOUT = 5.0
SHUTDOWN_TIMEOUT = 10.0

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_MISSING = (
    f"Redis is not running on {REDIS_HOST}:{REDIS_PORT}: start it with "
    "`redis-server --daemonize yes`"
)


class LiveServerError(RuntimeError):
    """The server did not start, or did not stop, in time or at all."""


@dataclass(frozen=True)
class LiveServer:
    """A running server.

    ``http`` and ``ws`` are base URLs without a trailing slash; ``errors`` is what uvicorn
    logged at ERROR level (``uvicorn.error``) while the server ran.
    """

    http: str
    ws: str
    port: int
    server: uvicorn.Server
    errors: list[str] = field(default_factory=list)


class _ErrorLog(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class _Server(uvicorn.Server):
    """uvicorn's Server, noticing `stop()` at once rather than at its next 0.1 s tick.

    Only the idle loop differs (``on_tick`` still runs every 0.1 s); startup, connections
    and shutdown are uvicorn's. It halves the time each test spends stopping its server.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self.should_exit = True
        self._stop.set()

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.1)


async def _serve(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit as exc:
        # uvicorn calls sys.exit(3) when the app's lifespan startup fails. A SystemExit
        # escaping a task would stop the test's event loop, and pytest with it.
        raise LiveServerError(f"uvicorn exited with status {exc.code}") from None


@contextlib.asynccontextmanager
async def run_live_server(app: Any, **settings: Any) -> AsyncIterator[LiveServer]:
    """Serve *app* on 127.0.0.1 until the block exits; see the module docstring."""
    limits = ServerLimits()
    if isinstance(app, NexiosApp):
        config = app.websocket_config
        limits = config.server_limits()
        settings = {
            "ping_interval": config.ping_interval,
            "ping_timeout": config.ping_timeout,
            "max_message_size": config.max_message_size,
            "compression": config.compression,
            **settings,
        }
    settings.setdefault("log_level", "warning")
    # Connections still open when the block exits get this long before being cancelled.
    settings.setdefault("limits", dataclasses.replace(limits, shutdown_timeout=2))
    # make_config configures uvicorn's logging (dictConfig), so it comes before addHandler.
    server = _Server(make_config(app, host="127.0.0.1", port=0, **settings))
    errors: list[str] = []
    log_handler = _ErrorLog(errors)
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(log_handler)
    task = asyncio.create_task(_serve(server))
    try:
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STARTUP_TIMEOUT
            while not server.started:
                # Wake up as soon as the task ends (startup failed), else poll `started`.
                await asyncio.wait({task}, timeout=0.005)
                if task.done():
                    why = "; ".join(errors) or repr(task.exception())
                    raise LiveServerError(f"The server did not start: {why}")
                if loop.time() > deadline:
                    raise LiveServerError(f"The server did not start within {STARTUP_TIMEOUT} s.")
        except BaseException:
            server.force_exit = True
            server.stop()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, SHUTDOWN_TIMEOUT)
            raise
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield LiveServer(
                f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", port, server, errors
            )
        finally:
            server.stop()
            try:
                await asyncio.wait_for(asyncio.shield(task), SHUTDOWN_TIMEOUT)
            except TimeoutError:
                server.force_exit = True
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, SHUTDOWN_TIMEOUT)
                raise LiveServerError(
                    f"The server did not stop within {SHUTDOWN_TIMEOUT} s."
                ) from None
    finally:
        uvicorn_log.removeHandler(log_handler)


LiveServerFactory: TypeAlias = Callable[..., contextlib.AbstractAsyncContextManager[LiveServer]]


@pytest.fixture
def live_server() -> LiveServerFactory:
    """``async with live_server(app, **settings) as server:`` (see `run_live_server`)."""
    return run_live_server


@pytest.fixture
async def redis_url() -> str:
    """The URL of the Redis server on 127.0.0.1:6379, after a ping.

    No Redis: the test is skipped, except in CI (``CI=true``) where it fails.
    """
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
    try:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError
    except ImportError:  # pragma: no cover - redis is in the dev extra
        reason = "redis-py is not installed: pip install -e '.[redis]'"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        await asyncio.wait_for(client.ping(), 2)
    except (RedisError, OSError, TimeoutError):
        if in_ci():
            pytest.fail(REDIS_MISSING, pytrace=False)
        pytest.skip(REDIS_MISSING)
    finally:
        await client.aclose()
    return url


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    """A redis-server for this test alone, to kill, restart or pause (`_redis`)."""
    require_redis_server()
    server = PrivateRedis(tmp_path)
    try:
        await server.start()
        yield server
    finally:
        await server.kill()
