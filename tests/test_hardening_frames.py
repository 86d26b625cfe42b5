"""Hostile clients against the real server (issue 17): fragment floods, compression as a
memory amplifier, and handshakes that the WebSocket parser refuses.

Each test serves a raw ASGI app with ``run_live_server`` (uvicorn with the nexios protocol,
in the test's event loop) and attacks it from bare sockets, building the frames by hand
(RFC 6455 section 5.2: a client masks every frame; the mask key here is zero, which leaves
the payload as it is and is as valid as any other key). Memory is the resident set size
of this process (``VmRSS``), which holds the server; the clients' own buffers are kept
small (they write in bounded chunks) so that what grows is the server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import struct
import time
import zlib
from collections.abc import Awaitable
from typing import Any

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from websockets.asyncio.client import connect

from _servers import RawApp as App
from _servers import Receive, Scope, Send
from conftest import LiveServer, run_live_server
from nexios.config import ServerLimits
from nexios.server import NexiosWebSocketProtocol

TIMEOUT = 5.0
MIB = 1 << 20

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
FIN, RSV1 = 0x80, 0x40


async def within(awaitable: Awaitable[Any], timeout: float = TIMEOUT) -> Any:
    return await asyncio.wait_for(awaitable, timeout)


def rss() -> int:
    """This process's resident set size, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def masked(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A client frame, masked with the zero key."""
    first = (FIN if fin else 0) | (RSV1 if rsv1 else 0) | opcode
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 0x10000:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    return head + b"\0\0\0\0" + payload


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        reply = {"type": "websocket.send", "bytes": message.get("bytes")}
        reply["text"] = message.get("text")
        await send(reply)


class Raw:
    """A bare socket after a real handshake: it writes what it is told, reads frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, extensions: bytes = b"", path: str = "/") -> Raw:
        reader, writer = await within(asyncio.open_connection("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16))
        writer.write(
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n" + extensions + b"\r\n"
        )
        try:
            head = await within(reader.readuntil(b"\r\n\r\n"))
            assert head.startswith(b"HTTP/1.1 101 "), head
        except BaseException:  # cancelled too (a flooder at the end of its test)
            writer.transport.abort()
            raise
        return cls(reader, writer)

    async def flood(self, data: bytes, chunk: int = 1 << 16) -> bool:
        """Write *data* in chunks, each after the last has drained; False if the server
        closed the connection first."""
        view = memoryview(data)
        try:
            for start in range(0, len(view), chunk):
                self.writer.write(view[start : start + chunk])
                await self.writer.drain()
        except ConnectionError:
            return False
        return True

    async def read_frame(self) -> tuple[int, bytes]:
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(length)

    async def until_close_or_pong(self) -> tuple[int, bytes]:
        """The first Close or Pong frame from the server."""
        while True:
            opcode, payload = await self.read_frame()
            if opcode in (CLOSE, PONG):
                return opcode, payload

    def abort(self) -> None:
        self.writer.transport.abort()


def close_of(frame: tuple[int, bytes]) -> tuple[int, str]:
    opcode, payload = frame
    assert opcode == CLOSE, f"the server answered the ping instead of closing: {frame}"
    (code,) = struct.unpack("!H", payload[:2])
    return code, payload[2:].decode()


def fragment_flood(fragments: int, size: int) -> bytes:
    """A text message begun and continued in *fragments* frames of *size* bytes, never
    finished; a Ping after it (answered only if the server is still reading)."""
    start = masked(TEXT, b"x" * size, fin=False)
    return start + masked(CONT, b"y" * size, fin=False) * fragments + masked(PING, b"alive?")


# Fragment floods


async def test_fragment_floods_are_closed_with_1009_and_hold_no_memory() -> None:
    """Three clients each begin a message and continue it in 300,000 fragments of 1 byte
    (two of them) or of none (the third) without ever finishing it. Before: the server
    kept every fragment (about 50 bytes each: +15 MiB per client, the empty ones counted
    toward no limit) and answered the Ping that followed. Now the 4,097th frame closes the
    connection with 1009 "message in too many fragments" (RFC 6455 section 7.4.1), and
    the server's memory grows by less than 16 MiB for the three (what it holds is one
    read of the socket each, at most 4,096 fragments, and the test's own buffers; the
    flood alone would be 45 MiB)."""
    limits = ServerLimits(shutdown_timeout=2)
    assert limits.max_fragments == 4096
    floods = [fragment_flood(300_000, 1), fragment_flood(300_000, 1), fragment_flood(300_000, 0)]
    async with run_live_server(App(echo), ping_interval=None, limits=limits) as server:
        clients = [await Raw.open(server.port) for _ in floods]
        refused = NexiosWebSocketProtocol.refused["too many fragments"]
        before = rss()
        started = time.monotonic()

        async def attack(client: Raw, flood: bytes) -> tuple[int, bytes]:
            await client.flood(flood)
            return await client.until_close_or_pong()

        try:
            answers = await within(
                asyncio.gather(*(attack(c, f) for c, f in zip(clients, floods, strict=True)))
            )
            elapsed = time.monotonic() - started
            growth = rss() - before
        finally:
            for client in clients:
                client.abort()
    for answer in answers:
        assert close_of(answer) == (1009, "message in too many fragments")
    assert NexiosWebSocketProtocol.refused["too many fragments"] == refused + 3
    assert growth < 16 * MIB, f"RSS grew by {growth / MIB:.1f} MiB in {elapsed:.1f} s"
    assert server.errors == []


async def routes(scope: Scope, receive: Receive, send: Send) -> None:
    """``/sink`` reads every message and answers none; any other path echoes."""
    if scope["path"] != "/sink":
        await echo(scope, receive, send)
        return
    await send({"type": "websocket.accept"})
    while (await receive())["type"] == "websocket.receive":
        pass


FLOODS = {
    # A message begun, then 1,000,000 fragments of 1 byte: closed at the 4,097th frame.
    "fragments": ("/", fragment_flood(1_000_000, 1)),
    # 1,000,000 empty text messages, each read by the app: all legitimate, but small
    # frames cost the parser as much as big ones.
    "empty messages": ("/sink", masked(TEXT) * 1_000_000),
}


@pytest.mark.parametrize("kind", list(FLOODS))
async def test_echo_keeps_answering_while_three_clients_flood(kind: str) -> None:
    """While three clients flood the server with small frames (reconnecting whenever
    they are closed), a well-behaved client's echo answers within 1 s every time.
    Before: the server parsed each of the flooders' reads whole (256 KiB, some 40,000
    frames, in one go) and the echo stalled for seconds: 3.0 s for fragments, 1.8 s for
    empty messages (1.0 s still, with backpressure alone). Now the server parses a
    turn's budget of each connection at a time."""
    path, flood = FLOODS[kind]
    async with run_live_server(App(routes), ping_interval=None) as server:
        stop = asyncio.Event()
        floods = 0

        async def flooder() -> None:
            nonlocal floods
            while not stop.is_set():
                client = await Raw.open(server.port, path=path)
                try:
                    floods += 1
                    await client.flood(flood)
                finally:
                    client.abort()

        flooders = [asyncio.create_task(flooder()) for _ in range(3)]
        slowest, count = 0.0, 0
        try:
            async with connect(server.ws + "/", ping_interval=None) as ws:
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline:
                    sent = time.monotonic()
                    await ws.send(f"echo {count}")
                    assert await within(ws.recv(), 10.0) == f"echo {count}"
                    slowest = max(slowest, time.monotonic() - sent)
                    count += 1
        finally:
            stop.set()
            for task in flooders:
                task.cancel()
            await asyncio.gather(*flooders, return_exceptions=True)
    assert floods >= 3
    assert slowest < 1.0, f"an echo took {slowest:.2f} s ({count} echoes, {floods} floods)"
    # Reads parsed whole (or a backlog's worth at a time) left room for 3 to 8 echoes
    # in 3 s; a turn's budget at a time, 70 to 240 (the machine is shared: a wide margin).
    assert count >= 20, f"{count} echoes in 3 s (slowest {slowest:.2f} s, {floods} floods)"


# Compression as an amplifier


def deflated_zeros(size: int) -> bytes:
    """*size* zero bytes as a permessage-deflate payload (RFC 7692 section 7.2.1: the
    final 00 00 ff ff of the sync flush removed), with a 4 KiB window."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -12)
    data = compressor.compress(bytes(size)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


async def test_compressed_messages_wait_compressed_while_the_app_is_not_reading() -> None:
    """Ten clients each send 200 deflated messages of 1 KB that inflate to 1 MiB, to a
    handler that is not reading. Before: each read of the socket was inflated whole,
    some 100 MiB per client (the process grew by hundreds of MiB). Now the server
    inflates only while less than ``max_backlog`` (1 MiB) waits for the app, keeps the
    rest as it arrived (compressed) and stops reading the socket: the process grows by
    less than 40 MiB for the ten (at most a backlog and a message each, 2 MiB, plus a
    read of compressed bytes and zlib's state; the app's messages would be 2,000 MiB).
    Then the app reads, and every message arrives whole and in order."""
    payload = deflated_zeros(MIB)
    assert len(payload) < 1100
    frame = masked(BINARY, payload, rsv1=True)
    accepted: asyncio.Queue[NexiosWebSocketProtocol] = asyncio.Queue()
    go = [asyncio.Event() for _ in range(10)]  # the app starts reading, per connection
    order = itertools.count()
    counts: asyncio.Queue[tuple[int, bool]] = asyncio.Queue()  # what the first app read

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        protocol = scope["extensions"]["nexios.websocket.send_nowait"]["send_nowait"].__self__
        index = next(order)
        accepted.put_nowait(protocol)
        await go[index].wait()
        if index:
            return  # only the first connection's app catches up
        count, whole = 0, True
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                break
            whole = whole and message["bytes"] == bytes(MIB)
            count += 1
            if count == 200:
                await send({"type": "websocket.send", "text": "all 200"})
        counts.put_nowait((count, whole))

    offer = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    async with run_live_server(App(handler), ping_interval=None, compression=True) as server:
        clients = [await Raw.open(server.port, offer) for _ in range(10)]
        protocols = [await within(accepted.get()) for _ in clients]
        paused = [asyncio.Event() for _ in protocols]
        for protocol, event in zip(protocols, paused, strict=True):
            pause_reading = protocol.transport.pause_reading

            def pause(pause_reading: Any = pause_reading, event: asyncio.Event = event) -> None:
                pause_reading()
                event.set()

            protocol.transport.pause_reading = pause  # type: ignore[method-assign]
        before = rss()
        try:
            for client in clients:
                client.writer.write(frame * 200)
            # Each connection stops reading once the app is behind; by then every read
            # so far has been handled.
            await within(asyncio.gather(*(event.wait() for event in paused)))
            growth = rss() - before
            assert growth < 40 * MIB, f"RSS grew by {growth / MIB:.0f} MiB"
            # The first connection's app catches up: its messages all arrive.
            go[0].set()
            opcode, text = await within(clients[0].read_frame(), 20.0)
            inflated = zlib.decompressobj(-15).decompress(text + b"\x00\x00\xff\xff")
            assert (opcode, inflated) == (TEXT, b"all 200")
        finally:
            for client in clients:
                client.abort()
            for event in go:
                event.set()
        assert await within(counts.get()) == (200, True)


async def test_an_app_that_closes_while_input_is_held_completes_the_close() -> None:
    """The app reads nothing, then closes, while the server holds the client's messages
    (3 MiB sent, past ``max_backlog``): the server parses on past what it held, drops it,
    and ends the connection as soon as the client's Close arrives, not at the 10 s
    close timeout."""
    closing = asyncio.Event()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        protocol = scope["extensions"]["nexios.websocket.send_nowait"]["send_nowait"].__self__
        held = protocol._held

        def spy() -> None:
            held()
            if protocol._waiting > protocol._max_backlog:
                closing.set()

        protocol._held = spy
        await closing.wait()
        await send({"type": "websocket.close", "code": 1000, "reason": "enough"})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    async with run_live_server(App(handler), ping_interval=None) as server:
        client = await Raw.open(server.port)
        try:
            client.writer.write(masked(BINARY, bytes(64 * 1024)) * 48)
            await within(closing.wait())
            started = time.monotonic()
            frame = await within(client.read_frame())
            assert close_of(frame) == (1000, "enough")
            client.writer.write(masked(CLOSE, struct.pack("!H", 1000)))
            assert await within(client.reader.read()) == b""  # the server closed
            elapsed = time.monotonic() - started
        finally:
            client.abort()
    assert elapsed < 2.0


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


@pytest.mark.parametrize("http", ["nexios", "httptools"])
@pytest.mark.parametrize("case", list(REFUSED_HANDSHAKES))
async def test_a_handshake_the_parser_refuses_is_answered_and_closed(case: str, http: str) -> None:
    """Before: the WebSocket parser refused these silently and the socket was held until
    the client gave up (a read of the answer timed out after 3 s). Now: the status at
    once (RFC 9110 section 15.5.15 for 414, RFC 6585 section 5 for 431), then the close;
    no handler runs. nexios' HTTP protocol refuses most of them before the WebSocket
    parser sees them (its head limits); behind uvicorn's own HttpToolsProtocol, every
    one reaches the WebSocket protocol, which answers them itself."""
    request, status = REFUSED_HANDSHAKES[case]
    reason = REASONS[status]
    refused = NexiosWebSocketProtocol.refused[reason]
    handled: list[Scope] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        handled.append(scope)
        await send({"type": "websocket.close"})

    settings = {"http": HttpToolsProtocol} if http == "httptools" else {}
    async with run_live_server(App(handler), ping_interval=None, **settings) as server:
        answer, elapsed = await _refused(server, request)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\nconnection: close" in head.lower()
    assert body, "the answer says why"
    assert elapsed < 2.0
    assert handled == []
    if http == "httptools":
        assert NexiosWebSocketProtocol.refused[reason] == refused + 1
    assert server.errors == []


async def test_many_refused_handshakes_hold_no_sockets() -> None:
    """200 clients at once send a header line over 8 KiB. Before: every socket stayed
    open (the server's connection set grew by 200, until the clients left). Now each is
    answered 431 and closed, and the server holds no connection afterwards."""
    request, status = REFUSED_HANDSHAKES["a header line over 8 KiB"]
    # uvicorn's own HTTP protocol: nexios' refuses these before the WebSocket protocol.
    async with run_live_server(App(echo), ping_interval=None, http=HttpToolsProtocol) as server:
        started = time.monotonic()
        answers = await within(
            asyncio.gather(*(_refused(server, request) for _ in range(200))), 10.0
        )
        elapsed = time.monotonic() - started
        assert all(a.startswith(b"HTTP/1.1 %d " % status) for a, _ in answers)
        # Every answer ended with the server's close: nothing of them is left open.
        assert not server.server.server_state.connections
    assert elapsed < 5.0, f"{elapsed:.1f} s for 200 refusals"
