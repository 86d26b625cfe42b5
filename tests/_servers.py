"""Real servers for tests: ``nexios run MODULE:APP`` processes on a free port of 127.0.0.1,
a raw ASGI app for serving one handler in process, and a bounded poll.

``AppServer(name, app, directory, env)`` starts the process with ``start(http)`` and
returns once ``GET /health`` answers 200 (the app must serve it); ``stop()`` sends
SIGTERM and kills it if it does not exit in time. The process's output goes to
``directory/server-<name>.log``, which ``log()`` returns for failure messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
STARTUP_DEADLINE = 10.0  # a server answers GET /health within this
STOP_DEADLINE = 10.0  # a server exits this long after SIGTERM, else it is killed


Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class RawApp:
    """A raw ASGI app: lifespan, and each WebSocket goes to ``handler`` after its connect
    event; what the handler raised is kept in ``errors``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.errors: list[BaseException] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "websocket"
        try:
            assert (await receive())["type"] == "websocket.connect"
            await self.handler(scope, receive, send)
        except BaseException as exc:
            self.errors.append(exc)
            raise


async def poll(
    condition: Callable[[], Awaitable[bool] | bool],
    what: str,
    deadline: float,
    explain: Callable[[], str] = lambda: "",
    interval: float = 0.02,
) -> float:
    """Check *condition* (sync or async) every *interval* seconds until it holds, for at
    most *deadline* seconds (then the test fails, saying *what* and *explain()*); the
    seconds it took."""
    started = time.monotonic()
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > deadline:
            pytest.fail(f"Not {what} after {deadline} s.\n{explain()}", pytrace=False)
        await asyncio.sleep(interval)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class AppServer:
    """``nexios run APP`` in a process of its own, with *env* added to the environment."""

    def __init__(
        self, name: str, app: str, directory: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.app = app
        self.env = dict(env or {})
        self.log_path = directory / f"server-{name}.log"
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None
        self.returncode: int | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def start(self, http: httpx.AsyncClient, port: int | None = None) -> None:
        """Start the process; return once ``GET /health`` answers 200.

        *port*: serve on this one (a restart on the port the clients know), else on a
        free one.
        """
        for _ in range(3):  # free_port() can race with another process: pick again
            self.port = port or free_port()
            env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
            with self.log_path.open("ab") as log:
                self.process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    *("-m", "nexios", "run", self.app),
                    *("--host", "127.0.0.1", "--port", str(self.port), "--log-level", "info"),
                    cwd=ROOT,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            if await self._ready(http):
                return
            if port is not None or "address already in use" not in self.log().lower():
                break
        pytest.fail(f"Server {self.name} did not start.\n{self.log()}", pytrace=False)

    async def _ready(self, http: httpx.AsyncClient) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_DEADLINE
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                await self.process.wait()
                return False
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(self.http + "/health", timeout=1)).status_code == 200:
                    return True
            await asyncio.sleep(0.02)
        await self.stop()
        return False

    async def stop(self) -> float:
        """SIGTERM, wait (bounded), SIGKILL if need be; how long it took to exit."""
        process, self.process = self.process, None
        if process is None:
            return 0.0
        started = time.monotonic()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_DEADLINE)
            except TimeoutError:
                process.kill()
                await process.wait()
                with self.log_path.open("a") as log:
                    log.write(f"\n[test] killed: no exit {STOP_DEADLINE} s after SIGTERM\n")
        self.returncode = process.returncode
        return time.monotonic() - started

    async def health(self, http: httpx.AsyncClient) -> dict[str, Any]:
        response = await http.get(self.http + "/health", timeout=2)
        assert response.status_code == 200, response.text
        health: dict[str, Any] = response.json()
        return health
