"""The in-process ASGI server the test clients share: settings, HTTP, lifespan.

Everything here runs on an asyncio event loop: the test's own loop for the async form,
a background thread's loop for the sync form.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

import httpx

from nexios.types import ASGIApp, Message, Scope

__all__ = ["LifespanFailed"]

ASGI_VERSION = "3.0"

logger = logging.getLogger("nexios.testing")


class LifespanFailed(RuntimeError):
    """The app answered ``lifespan.startup.failed`` or ``lifespan.shutdown.failed``.

    ``phase`` is ``"startup"`` or ``"shutdown"``; ``message`` is the app's message.
    """

    def __init__(self, phase: Literal["startup", "shutdown"], message: str = "") -> None:
        super().__init__(f"lifespan {phase} failed" + (f": {message}" if message else ""))
        self.phase = phase
        self.message = message


@dataclass
class AppConfig:
    """What every connection of one test client shares."""

    app: ASGIApp
    raise_server_exceptions: bool
    timeout: float | None
    client: tuple[str, int] | None
    root_path: str = ""
    # The lifespan state: the app fills it during startup; each connection gets a copy.
    state: dict[str, Any] = field(default_factory=dict)


def resolve_timeout(timeout: float | None, default: float | None) -> float | None:
    """A per-call ``timeout`` (``None``: the client's), ``inf`` meaning no limit."""
    value = default if timeout is None else timeout
    if value is not None and math.isinf(value):
        return None
    return value


def describe_timeout(timeout: float | None) -> str:
    return f"{timeout:g} s"


def split_url(url: httpx.URL, root_path: str) -> dict[str, Any]:
    """The scope keys that come from the URL: scheme-independent part."""
    raw_path = url.raw_path.partition(b"?")[0] or b"/"
    port = url.port
    if port is None:
        port = 443 if url.scheme in ("https", "wss") else 80
    return {
        "root_path": root_path,
        "path": root_path + unquote(raw_path.decode("ascii")),
        "raw_path": root_path.encode("ascii") + raw_path,
        "query_string": url.query,
        "server": (url.host, port),
    }


def lower_headers(headers: httpx.Headers) -> list[tuple[bytes, bytes]]:
    return [(name.lower(), value) for name, value in headers.raw]


def request_timeout(request: httpx.Request) -> float | None:
    """httpx's read timeout for this request, which bounds the app's answer."""
    timeouts = request.extensions.get("timeout")
    if isinstance(timeouts, dict):
        read = timeouts.get("read")
        if isinstance(read, int | float):
            return None if math.isinf(read) else float(read)
    return None


# --------------------------------------------------------------------------- HTTP


async def run_http(
    config: AppConfig, request: httpx.Request, body: bytes, limit: float | None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run one HTTP request through the app; return (status, headers, body)."""
    url = request.url
    scope: Scope = {
        "type": "http",
        "asgi": {"version": ASGI_VERSION, "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": url.scheme,
        "headers": lower_headers(request.headers),
        "client": config.client,
        "state": config.state.copy(),
        "extensions": {},
        **split_url(url, config.root_path),
    }
    request_sent = False
    response_complete = asyncio.Event()
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await response_complete.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, headers
        kind = message["type"]
        if kind == "http.response.start":
            if status is not None:
                raise RuntimeError("The app sent 'http.response.start' twice.")
            status = int(message["status"])
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif kind == "http.response.body":
            if status is None:
                raise RuntimeError(
                    "The app sent 'http.response.body' before 'http.response.start'."
                )
            if response_complete.is_set():
                raise RuntimeError("The app sent 'http.response.body' after the response ended.")
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                response_complete.set()
        else:
            raise RuntimeError(f"Unexpected ASGI message {kind!r} on an HTTP connection.")

    where = f"{request.method} {url.raw_path.decode('ascii')}"
    try:
        try:
            async with asyncio.timeout(limit) as deadline:
                await config.app(scope, receive, send)
        except TimeoutError:
            if deadline.expired():
                raise TimeoutError(
                    f"Timed out after {describe_timeout(limit)} waiting for the app "
                    f"to answer {where}."
                ) from None
            raise
    except Exception:
        if config.raise_server_exceptions:
            raise
        if status is None:
            return 500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error"
        return status, headers, b"".join(chunks)
    finally:
        response_complete.set()
    if status is None:
        if config.raise_server_exceptions:
            raise RuntimeError(f"The app returned without sending a response to {where}.")
        return 500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error"
    return status, headers, b"".join(chunks)


# ----------------------------------------------------------------------- lifespan


class Lifespan:
    """The ASGI lifespan protocol, tolerant of apps that do not speak it (uvicorn's "auto").

    An app that raises (or returns) before answering ``lifespan.startup`` is taken not to
    support lifespan, as uvicorn's ``lifespan="auto"`` does: the client goes on without it
    (and logs that on the ``nexios.testing`` logger). ``lifespan.startup.failed`` raises
    :class:`LifespanFailed`; an exception after a completed startup is re-raised at exit
    when ``raise_server_exceptions`` is set.
    """

    def __init__(self, config: AppConfig) -> None:
        self._config = config
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._answers: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._error: Exception | None = None
        self._supported = False

    @property
    def supported(self) -> bool:
        return self._supported

    async def _receive(self) -> Message:
        return await self._queue.get()

    async def _send(self, message: Message) -> None:
        kind = message.get("type")
        if kind not in (
            "lifespan.startup.complete",
            "lifespan.startup.failed",
            "lifespan.shutdown.complete",
            "lifespan.shutdown.failed",
        ):
            raise RuntimeError(f"Unexpected ASGI message {kind!r} on the lifespan scope.")
        await self._answers.put(message)

    async def _run(self) -> None:
        scope: Scope = {
            "type": "lifespan",
            "asgi": {"version": ASGI_VERSION, "spec_version": "2.0"},
            "state": self._config.state,
        }
        try:
            await self._config.app(scope, self._receive, self._send)
        except Exception as exc:
            self._error = exc
        finally:
            # Wake a waiter: the app is gone.
            self._answers.put_nowait({"type": "nexios.testing.lifespan.ended"})

    async def _answer(self, phase: str) -> Message:
        timeout = self._config.timeout
        try:
            async with asyncio.timeout(timeout):
                return await self._answers.get()
        except TimeoutError:
            await self._stop()
            raise TimeoutError(
                f"Timed out after {describe_timeout(timeout)} waiting for the app to answer "
                f"'lifespan.{phase}'."
            ) from None

    async def startup(self) -> None:
        self._config.state.clear()
        self._queue.put_nowait({"type": "lifespan.startup"})
        self._task = asyncio.create_task(self._run(), name="nexios.testing lifespan")
        answer = await self._answer("startup")
        kind = answer["type"]
        if kind == "lifespan.startup.complete":
            self._supported = True
            return
        if kind == "lifespan.startup.failed":
            await self._stop()
            raise LifespanFailed("startup", str(answer.get("message", "")))
        if kind == "nexios.testing.lifespan.ended":
            # The app does not support lifespan: go on without it.
            error, self._error = self._error, None
            logger.debug(
                "ASGI 'lifespan' protocol appears unsupported by %r.",
                self._config.app,
                exc_info=error,
            )
            return
        await self._stop()
        raise RuntimeError(f"Unexpected ASGI message {kind!r} during lifespan startup.")

    async def shutdown(self) -> None:
        task = self._task
        if task is None:
            return
        if not self._supported or task.done():
            await self._stop()
            self._raise_error()
            return
        self._queue.put_nowait({"type": "lifespan.shutdown"})
        answer = await self._answer("shutdown")
        kind = answer["type"]
        # Give the app the rest of the timeout to return, then cancel it.
        await self._stop(wait=True)
        if kind == "lifespan.shutdown.failed":
            raise LifespanFailed("shutdown", str(answer.get("message", "")))
        self._raise_error()
        if kind != "lifespan.shutdown.complete" and kind != "nexios.testing.lifespan.ended":
            raise RuntimeError(f"Unexpected ASGI message {kind!r} during lifespan shutdown.")

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None and self._config.raise_server_exceptions:
            raise error

    async def _stop(self, *, wait: bool = False) -> None:
        task = self._task
        if task is None or task.done():
            return
        if wait:
            await asyncio.wait({task}, timeout=self._config.timeout)
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=self._config.timeout)
