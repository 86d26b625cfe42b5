"""Hostile clients against the real server (issue 17): handshakes that the WebSocket
parser refuses.

Each test serves a raw ASGI app with ``run_live_server`` (uvicorn with the nexios protocol,
in the test's event loop) and attacks it from bare sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conftest import LiveServer, run_live_server
from nexios.server import NexiosWebSocketProtocol

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

TIMEOUT = 5.0


async def within(awaitable: Awaitable[Any], timeout: float = TIMEOUT) -> Any:
    return await asyncio.wait_for(awaitable, timeout)


class App:
    """A raw ASGI app: lifespan, and each WebSocket to ``handler`` after its connect."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

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
        assert (await receive())["type"] == "websocket.connect"
        await self.handler(scope, receive, send)


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        reply = {"type": "websocket.send", "bytes": message.get("bytes")}
        reply["text"] = message.get("text")
        await send(reply)


# Handshakes the WebSocket parser refuses

_KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
_UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" + _KEY


def _request(target: bytes = b"/", headers: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + _UPGRADE + b"\r\n"


REFUSED_HANDSHAKES: dict[str, tuple[bytes, int]] = {
    "a 100 KB path": (_request(b"/" + b"p" * 100_000), 414),
    "a 0.9 MB query": (_request(b"/?q=" + b"q" * 900_000), 414),
    "a header line over 8 KiB": (_request(headers=b"X-Big: " + b"b" * 9000 + b"\r\n"), 431),
    "129 headers": (
        _request(headers=b"".join(b"X-H%d: %d\r\n" % (i, i) for i in range(129))),
        431,
    ),
    "a request body": (_request(headers=b"Content-Length: 5\r\n") + b"hello", 400),
    "a chunked body": (_request(headers=b"Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n", 400),
}


# How the server counts each (NexiosWebSocketProtocol.refused).
REASONS = {
    414: "request line too long",
    431: "request head too large",
    400: "invalid handshake request",
}


async def _refused(server: LiveServer, request: bytes) -> tuple[bytes, float]:
    """Send *request*; the server's whole answer, and how long until it closed."""
    reader, writer = await within(asyncio.open_connection("127.0.0.1", server.port))
    started = time.monotonic()
    try:
        writer.write(request)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        answer = await within(reader.read(), 3.0)  # until the server closes
        return answer, time.monotonic() - started
    finally:
        writer.transport.abort()


@pytest.mark.parametrize("case", list(REFUSED_HANDSHAKES))
async def test_a_handshake_the_parser_refuses_is_answered_and_closed(case: str) -> None:
    """Before: the WebSocket parser refused these silently and the socket was held until
    the client gave up (a read of the answer timed out after 3 s). Now: the status at
    once (RFC 9110 section 15.5.15 for 414, RFC 6585 section 5 for 431), then the close;
    no handler runs."""
    request, status = REFUSED_HANDSHAKES[case]
    reason = REASONS[status]
    refused = NexiosWebSocketProtocol.refused[reason]
    handled: list[Scope] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        handled.append(scope)
        await send({"type": "websocket.close"})

    async with run_live_server(App(handler), ping_interval=None) as server:
        answer, elapsed = await _refused(server, request)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\nconnection: close" in head.lower()
    assert body, "the answer says why"
    assert elapsed < 2.0
    assert handled == []
    assert NexiosWebSocketProtocol.refused[reason] == refused + 1
    assert server.errors == []


async def test_many_refused_handshakes_hold_no_sockets() -> None:
    """200 clients at once send a header line over 8 KiB. Before: every socket stayed
    open (the server's connection set grew by 200, until the clients left). Now each is
    answered 431 and closed, and the server holds no connection afterwards."""
    request, status = REFUSED_HANDSHAKES["a header line over 8 KiB"]
    async with run_live_server(App(echo), ping_interval=None) as server:
        started = time.monotonic()
        answers = await within(
            asyncio.gather(*(_refused(server, request) for _ in range(200))), 10.0
        )
        elapsed = time.monotonic() - started
        assert all(a.startswith(b"HTTP/1.1 %d " % status) for a, _ in answers)
        # Every answer ended with the server's close: nothing of them is left open.
        assert not server.server.server_state.connections
    assert elapsed < 5.0, f"{elapsed:.1f} s for 200 refusals"
