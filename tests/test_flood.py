"""A handler that floods a group, on the real server: readers get everything, a client
that stops reading meets its policy, and the server's memory stays within the log's bounds.

Each test serves a ``NexiosApp`` with the ``live_server`` fixture (uvicorn with the nexios
protocol, in the test's event loop). Readers are ``picows`` clients (fast, they read
everything as it comes and check the order); a stalled client completes the handshake
on a socket with a tiny receive buffer and then reads nothing until told to. A handler
on ``/publish`` publishes as fast as it can (a loop of ``await app.channels.publish``,
no pacing of its own) and times each publish: the layer paces it by the members that
read, and by a stalled one for at most ``pace_timeout`` (docs/channels.md).

What the handlers see comes through ``asyncio.Queue``s and events; every wait is bounded
(`within`); nothing sleeps, and the only assertions about time are the bounds the layer
states (``pace_timeout``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

import nexios.server.protocol
from nexios import NexiosApp, WebSocket, WebSocketConfig
from nexios.channels import Bounds, Broker, MemoryBroker
from nexios.channels.registry import Member
from nexios.channels.writers import SLOW_CONSUMER_CLOSE
from nexios.exceptions import WebSocketDisconnect

try:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
except ImportError:  # pragma: no cover - picows is a test dependency
    # As for Redis (conftest.py): skipped on a developer's machine, a failure in CI.
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        raise
    pytest.skip("picows is not installed: pip install picows", allow_module_level=True)

TIMEOUT = 5.0  # any one thing the test waits for
FLOOD_TIMEOUT = 30.0  # a whole flood, published and read
SIZE = 8 * 1024  # bytes per message
BIG = 64 * 1024
COUNT = 3000  # messages per flood: 3000 x 8 KiB = 23.4 MiB to each reader
READERS = 20
# The stalled client's socket receive buffer (the kernel doubles it). The server's send
# buffer still absorbs a few MiB (autotuning, up to net.ipv4.tcp_wmem's 4 MiB) before
# its socket is full and it falls behind in the log.
SLOW_RCVBUF = 4096
# Shorter than the layer's 1 s: how long a stalled member may hold the publisher back.
PACE_TIMEOUT = 0.3


async def within(awaitable: Awaitable[Any], timeout: float = TIMEOUT) -> Any:
    return await asyncio.wait_for(awaitable, timeout)


_FILLERS: dict[int, str] = {}


def payload(i: int, size: int = SIZE) -> str:
    """Message ``i``: its number in 8 digits, then filler up to ``size`` bytes."""
    filler = _FILLERS.get(size)
    if filler is None:
        filler = _FILLERS[size] = "x" * (size - 8)
    return f"{i:08d}{filler}"


# ---------------------------------------------------------------------------- the app


@dataclass
class Flood:
    """What the publishing handler did: how long each publish took, in seconds."""

    waits: list[float] = field(default_factory=list)
    took: float = 0.0

    def held_back(self, longer_than: float) -> list[float]:
        return sorted(w for w in self.waits if w > longer_than)


@dataclass
class Feed:
    """An app whose connections stay open until the client leaves; what its handlers saw."""

    app: NexiosApp
    joined: asyncio.Queue[tuple[str, WebSocket]] = field(default_factory=asyncio.Queue)
    # (name, close code) from the "disconnect" listener, which runs once the connection
    # has been unregistered from the channel layer.
    gone: asyncio.Queue[tuple[str, int | None]] = field(default_factory=asyncio.Queue)
    sockets: dict[str, WebSocket] = field(default_factory=dict)
    floods: list[Flood] = field(default_factory=list)

    async def connected(self, name: str) -> WebSocket:
        """The server side of the connection the client named ``name`` (in its query)."""
        while name not in self.sockets:
            joined, ws = await within(self.joined.get())
            self.sockets[joined] = ws
        return self.sockets[name]

    async def member(self, name: str) -> Member:
        member = self.app.channels.member_of(await self.connected(name))
        assert member is not None
        return member

    async def left(self, n: int) -> dict[str, int | None]:
        """Wait until ``n`` connections have ended; their names and close codes."""
        return dict([await within(self.gone.get()) for _ in range(n)])


def make_feed(
    config: WebSocketConfig,
    group: str = "room",
    log: Bounds | None = None,
    broker: Broker | None = None,
    **routes: WebSocketConfig,
) -> Feed:
    """``/feed`` with the app's config, plus ``/<name>`` for each route-level config: a
    handler that joins ``group`` (with envelopes if the query says ``envelope=1``) and
    reads until the client leaves. ``/publish``: a handler that floods (see `flood`)."""
    # A broker of its own (a memory hub, or a Redis prefix): nobody else shares its logs.
    if broker is None:
        broker = MemoryBroker(f"flood-{uuid.uuid4().hex}")
    app = NexiosApp(websocket_config=config, broker=broker, log=log)
    app.channels.pace_timeout = PACE_TIMEOUT
    feed = Feed(app)

    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        await ws.join(group, envelope=ws.query_params.get("envelope") == "1")
        feed.joined.put_nowait((ws.query_params.get("name", ""), ws))
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await ws.receive()

    async def publisher(ws: WebSocket) -> None:
        """Each request ``{"group", "first", "count", "size"}``: publish as fast as it can,
        timing each publish; answer ``"done"``."""
        await ws.accept()
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                request = await ws.receive_json()
                to, first, size = request["group"], request["first"], request["size"]
                record = Flood()
                feed.floods.append(record)
                waits = record.waits
                clock = time.perf_counter
                started = clock()
                for i in range(first, first + request["count"]):
                    message = payload(i, size)
                    before = clock()
                    await app.channels.publish(to, message)
                    waits.append(clock() - before)
                record.took = clock() - started
                await ws.send_text("done")

    @app.on("disconnect")
    async def on_disconnect(ws: WebSocket) -> None:
        if ws.url.path != "/publish":
            feed.gone.put_nowait((ws.query_params.get("name", ""), ws.close_code))

    app.add_ws_route("/feed", handler)
    app.add_ws_route("/publish", publisher)
    for path, route_config in routes.items():
        app.add_ws_route(f"/{path}", handler, config=route_config)
    return feed


@contextlib.asynccontextmanager
async def publisher(url: str) -> AsyncIterator[ClientConnection]:
    async with connect(
        url + "/publish", ping_interval=None, open_timeout=TIMEOUT, close_timeout=TIMEOUT
    ) as client:
        yield client


async def flood(
    client: ClientConnection,
    feed: Feed,
    group: str = "room",
    count: int = COUNT,
    size: int = SIZE,
    first: int = 0,
) -> Flood:
    """Have the ``/publish`` handler publish messages ``first..first+count-1`` to
    ``group`` as fast as it can; what it did."""
    await client.send(orjson.dumps({"group": group, "first": first, "count": count, "size": size}))
    assert await within(client.recv(), FLOOD_TIMEOUT) == "done"
    return feed.floods[-1]


# ---------------------------------------------------------------------------- readers


class Progress:
    """`reached` waits until every reader has received ``target`` messages."""

    def __init__(self, clients: int, target: int) -> None:
        self.target = target
        self.missing = clients
        self.done = asyncio.Event()

    def arrived(self, count: int) -> None:
        if count == self.target:
            self.missing -= 1
            if self.missing == 0:
                self.done.set()

    async def reached(self) -> None:
        await within(self.done.wait(), FLOOD_TIMEOUT)


class Reader(WSListener):  # type: ignore[misc]
    """A picows client that reads everything as it comes and checks the order."""

    def __init__(self, progress: Progress, size: int) -> None:
        super().__init__()
        self.progress = progress
        self.size = size
        self.count = 0
        self.out_of_order: list[tuple[int, int]] = []
        self.bad_frames = 0
        self.close_code: int | None = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            if not frame.fin or frame.payload_size != self.size:
                self.bad_frames += 1
            seq = int(bytes(frame.get_payload_as_memoryview()[:8]))
            if seq != self.count:
                self.out_of_order.append((self.count, seq))
            self.count += 1
            self.progress.arrived(self.count)
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code().value
            transport.send_close(frame.get_close_code())
            transport.disconnect()


# picows grows its read buffer (by doubling, from 16 KiB) whenever a read fills it.
READ_BUFFER = 1024 * 1024


@contextlib.asynccontextmanager
async def readers(
    url: str, n: int, count: int = COUNT, size: int = SIZE
) -> AsyncIterator[tuple[Progress, list[Reader]]]:
    """``n`` picows clients on ``url``, named r0..r<n-1>, each expecting ``count``
    messages of ``size`` bytes; disconnected on exit."""
    progress = Progress(n, count)
    connections: list[tuple[WSTransport, Reader]] = []
    try:
        for i in range(n):
            connection = await within(
                ws_connect(
                    lambda: Reader(progress, size),
                    f"{url}?name=r{i}",
                    websocket_handshake_timeout=TIMEOUT,
                    read_buffer_init_size=READ_BUFFER,
                    max_frame_size=2 * BIG,
                )
            )
            connections.append(connection)
        yield progress, [listener for _, listener in connections]
    finally:
        for transport, _ in connections:
            transport.disconnect()
        for transport, _ in connections:
            await within(transport.wait_disconnected())


def assert_complete(listeners: list[Reader], count: int) -> None:
    for listener in listeners:
        assert listener.out_of_order[:3] == []
        assert listener.bad_frames == 0
        assert listener.close_code is None
        assert listener.count == count


def names(n: int) -> set[str]:
    return {f"r{i}" for i in range(n)}


# ---------------------------------------------------------------------------- stalled clients


class StalledClient:
    """A WebSocket client on a bare socket with a small receive buffer: it completes the
    handshake, then reads nothing until told to. Frames are parsed here (the server does
    not mask them)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, port: int, path: str) -> StalledClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
        sock.setblocking(False)
        client = cls(sock)
        try:
            await within(client.loop.sock_connect(sock, ("127.0.0.1", port)))
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            )
            await within(client.loop.sock_sendall(sock, request.encode()))
            while b"\r\n\r\n" not in client.buffer:
                chunk = await within(client.loop.sock_recv(sock, 1024))
                assert chunk, "the server closed during the handshake"
                client.buffer += chunk
        except BaseException:
            sock.close()
            raise
        head, _, rest = bytes(client.buffer).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        client.buffer = bytearray(rest)
        return client

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    async def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = await within(self.loop.sock_recv(self.sock, 1 << 16))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    async def frame(self) -> tuple[int, bytes]:
        """The next frame: its opcode and payload."""
        first, second = await self._read(2)
        assert first & 0x80, "fragmented frames are not expected"
        assert not second & 0x80, "the server must not mask"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self._read(8))
        return first & 0x0F, await self._read(length)

    async def text(self) -> bytes:
        opcode, data = await self.frame()
        assert opcode == 0x1, f"expected a text frame, got opcode {opcode}"
        return data

    async def read_until_close(self, size: int = SIZE) -> tuple[list[int], tuple[int, str]]:
        """Read every message up to the server's Close: their numbers, and the close."""
        seqs: list[int] = []
        while True:
            opcode, data = await self.frame()
            if opcode == 0x8:
                (code,) = struct.unpack("!H", data[:2])
                return seqs, (code, data[2:].decode())
            assert opcode == 0x1, f"expected a text frame, got opcode {opcode}"
            assert len(data) == size
            seqs.append(int(data[:8]))

    async def send_close(self, code: int = 1000) -> None:
        mask = os.urandom(4)
        body = struct.pack("!H", code)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(body))
        frame = bytes([0x88, 0x80 | len(body)]) + mask + masked
        await within(self.loop.sock_sendall(self.sock, frame))

    def abort(self) -> None:
        """Leave without reading: the unread data makes the kernel reset the connection."""
        self.sock.close()


async def paused_websockets_client(port: int, path: str) -> ClientConnection:
    """A ``websockets`` client with a small receive buffer whose transport stops reading
    right after the handshake (``transport.pause_reading()``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    sock.setblocking(False)
    try:
        await within(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)))
        client = await connect(
            f"ws://127.0.0.1:{port}{path}",
            sock=sock,
            ping_interval=None,
            open_timeout=TIMEOUT,
            close_timeout=TIMEOUT,
            max_size=None,
        )
    except BaseException:
        sock.close()
        raise
    client.transport.pause_reading()
    return client


@contextlib.contextmanager
def traced() -> Any:
    """tracemalloc over the block; yields a dict that gets base/current/peak (bytes)."""
    figures: dict[str, int] = {}
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        figures["base"] = tracemalloc.get_traced_memory()[0]
        yield figures
        figures["current"], figures["peak"] = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()


def server_protocol(server: Any, client_port: int) -> Any:
    """The server's protocol object for the connection from ``client_port``."""
    for protocol in server.server.server_state.connections:
        if getattr(protocol, "client", None) and protocol.client[1] == client_port:
            return protocol
    raise AssertionError(f"no server connection from port {client_port}")


# ---------------------------------------------------------------------------- floods


@pytest.fixture(params=["memory", "redis"])
def broker(request: pytest.FixtureRequest) -> Broker:
    """The contract suite's brokers: the floods deliver the same on both."""
    if request.param == "memory":
        return MemoryBroker(f"flood-{uuid.uuid4().hex}")
    url = request.getfixturevalue("redis_url")
    from nexios.channels.brokers.redis import RedisBroker

    return RedisBroker(url, prefix=f"flood-{uuid.uuid4().hex[:8]}")


async def test_a_flood_reaches_every_reader_and_a_stalled_client_is_closed_once(
    live_server: Any, broker: Broker
) -> None:
    """3,000 x 8 KiB published as fast as a handler can to 20 readers and a client that
    reads nothing: every reader gets all 3,000 in order; the stalled client holds the
    publisher back once, for about pace_timeout, then paces nobody, and is closed with
    1013 when it falls off the log."""
    feed = make_feed(WebSocketConfig(ping_interval=None), broker=broker)
    app = feed.app
    async with live_server(app) as server:
        stalled = await StalledClient.connect(server.port, "/feed?name=stalled")
        try:
            member = await feed.member("stalled")
            assert member.policy == "close"
            async with (
                readers(server.ws + "/feed", READERS) as (progress, listeners),
                publisher(server.ws) as client,
            ):
                assert app.channels.groups()["room"] == READERS + 1
                record = await flood(client, feed)
                await progress.reached()
                assert_complete(listeners, COUNT)

                held = record.held_back(PACE_TIMEOUT / 2)
                print(
                    f"\n[close] {COUNT} x {SIZE // 1024} KiB to {READERS} readers in "
                    f"{record.took:.2f} s; held back longer than {PACE_TIMEOUT / 2} s: "
                    f"{held}; {app.channels.stats}"
                )
                # Held back by the stalled client once, for the bound; by the readers
                # only briefly.
                assert len(held) == 1, held
                assert PACE_TIMEOUT * 0.9 <= held[0] < PACE_TIMEOUT + 1.0
                stats = app.channels.stats
                assert stats.slow == 1
                assert member.slow
                assert stats.closed_slow == 1
                # Gone from the group at once; its handler saw the disconnect (1013).
                assert app.channels.groups()["room"] == READERS
                assert await feed.connected("stalled") not in app.channels.members("room")
                assert await feed.left(1) == {"stalled": 1013}
                assert app.channels.member_of(await feed.connected("stalled")) is None

                # The stalled client reads at last: the messages that reached its
                # socket, from the first, then the server's Close, 1013.
                seqs, close = await stalled.read_until_close()
                assert close == SLOW_CONSUMER_CLOSE
                assert seqs == list(range(len(seqs)))
                assert member.missed > 0
                await stalled.send_close(1013)
        finally:
            stalled.abort()
        assert set(await feed.left(READERS)) == names(READERS)
        assert app.channels.groups() == {}


async def test_a_flood_of_64_kib_messages_reaches_one_reader_whole(
    live_server: Any, broker: Broker
) -> None:
    """3,000 x 64 KiB (188 MiB) to one reader: every one arrives, in order (the earlier
    private outbox delivered 358 of them)."""
    feed = make_feed(WebSocketConfig(ping_interval=None, max_message_size=2 * BIG), broker=broker)
    app = feed.app
    async with live_server(app) as server:
        async with (
            readers(server.ws + "/feed", 1, size=BIG) as (progress, listeners),
            publisher(server.ws) as client,
        ):
            record = await flood(client, feed, size=BIG)
            await progress.reached()
            assert_complete(listeners, COUNT)
            stats = app.channels.stats
            print(f"\n[64 KiB] {COUNT} published in {record.took:.2f} s; {stats}")
            assert stats.slow == stats.closed_slow == stats.skipped == 0


async def test_skip_keeps_a_stalled_client_and_accounts_for_every_message(
    live_server: Any,
) -> None:
    """slow_consumer="skip": the stalled client stays connected; reading again, it gets
    what reached its socket, a notice of how many it missed, then the newest messages in
    order; what it got plus what it was told it missed is every message published."""
    feed = make_feed(WebSocketConfig(slow_consumer="skip", ping_interval=None))
    app = feed.app
    more = 10
    async with live_server(app) as server:
        stalled = await StalledClient.connect(server.port, "/feed?name=stalled&envelope=1")
        try:
            member = await feed.member("stalled")
            assert member.policy == "skip"
            async with (
                readers(server.ws + "/feed", 2, count=COUNT + more) as (progress, listeners),
                publisher(server.ws) as client,
            ):
                record = await flood(client, feed)
                stats = app.channels.stats
                print(f"\n[skip] {COUNT} published in {record.took:.2f} s; {stats}")
                assert len(record.held_back(PACE_TIMEOUT / 2)) == 1
                assert stats.slow == 1
                assert stats.closed_slow == 0
                assert not member.closed
                assert app.channels.groups()["room"] == 2 + 1  # still a member
                assert member.missed == stats.skipped > 0

                # The client reads again: every message, or the notice of its loss, in
                # the stream's order, up to the newest.
                last = 0  # the last offset the client has accounted for
                got: list[int] = []
                told = 0
                while last < COUNT:
                    message = orjson.loads(await stalled.text())
                    assert message["group"] == "room"
                    if "missed" in message:
                        assert message["offset"] - message["missed"] == last, (message, last)
                        told += message["missed"]
                    else:
                        assert message["offset"] == last + 1, (message, last)
                        assert int(message["data"][:8]) == message["offset"] - 1
                        got.append(message["offset"] - 1)
                    last = message["offset"]
                assert told == member.missed == stats.skipped
                assert len(got) + told == COUNT
                assert got[-1] == COUNT - 1

                # It is live again: the next messages reach it, all of them.
                await flood(client, feed, count=more, first=COUNT)
                for i in range(COUNT, COUNT + more):
                    message = orjson.loads(await stalled.text())
                    assert message["offset"] == i + 1
                    assert int(message["data"][:8]) == i
                await progress.reached()
                assert_complete(listeners, COUNT + more)
                assert member.missed == stats.skipped == told
                assert stats.closed_slow == 0
        finally:
            stalled.abort()
        assert set(await feed.left(3)) == names(2) | {"stalled"}


@pytest.mark.parametrize(
    ("app_policy", "route_policy"), [("close", "drop_newest"), ("skip", "close")]
)
async def test_a_routes_slow_consumer_policy_overrides_the_apps(
    live_server: Any, app_policy: Any, route_policy: Any
) -> None:
    """A route's WebSocketConfig(outbox_size, slow_consumer) replaces the app's for the
    connections it serves, in the groups they join; the stalled client here is a
    ``websockets`` client whose transport stops reading. ("drop_newest", an earlier
    name, means "skip".)"""
    route_size = 8
    feed = make_feed(
        WebSocketConfig(slow_consumer=app_policy, ping_interval=None),
        group="ticker",
        log=Bounds(max_count=100),
        ticker=WebSocketConfig(outbox_size=route_size, slow_consumer=route_policy),
    )
    app = feed.app
    route_means = "skip" if route_policy == "drop_newest" else route_policy
    async with live_server(app) as server:
        # The same handler on /feed has the app's settings.
        async with connect(
            server.ws + "/feed?name=app-default", ping_interval=None, open_timeout=TIMEOUT
        ):
            default = await feed.member("app-default")
            assert (default.maxsize, default.policy) == (256, app_policy)
        assert await feed.left(1) == {"app-default": 1000}

        stalled = await paused_websockets_client(server.port, "/ticker?name=stalled")
        try:
            member = await feed.member("stalled")
            assert (member.maxsize, member.policy) == (route_size, route_means)
            async with (
                readers(server.ws + "/ticker", 2) as (progress, listeners),
                publisher(server.ws) as client,
            ):
                await flood(client, feed, group="ticker")
                await progress.reached()
                assert_complete(listeners, COUNT)
                stats = app.channels.stats
                if route_means == "close":
                    assert stats.closed_slow == 1
                    assert await feed.left(1) == {"stalled": 1013}
                else:
                    assert stats.closed_slow == 0
                    assert not member.closed
                    assert member.missed == stats.skipped > 0
        finally:
            # It would read the closing handshake only after every message: it leaves.
            stalled.transport.abort()
        gone = await feed.left(2 if route_means == "close" else 3)
        assert set(gone) == names(2) | ({"stalled"} if route_means == "skip" else set())


async def test_memory_stays_within_the_log_bounds_while_a_client_is_stalled(
    live_server: Any,
) -> None:
    """3,000 x 8 KiB (23.4 MiB) published while a client reads nothing (skip: it stays
    connected all along): the server holds the group's log (8 MiB at most) and little
    else, and holds no more after 3,000 messages than after 1,500."""
    feed = make_feed(WebSocketConfig(slow_consumer="skip", ping_interval=None))
    app = feed.app
    half = COUNT // 2
    async with live_server(app) as server:
        stalled = await StalledClient.connect(server.port, "/feed?name=stalled")
        try:
            member = await feed.member("stalled")
            # No picows reader here: its read buffer grows (2 MiB) in the traced process.
            async with publisher(server.ws) as client:
                with traced() as memory:
                    record = await flood(client, feed, count=half)
                    at_half = tracemalloc.get_traced_memory()[0]
                    await flood(client, feed, count=COUNT - half, first=half)
                assert member.missed > 0
                assert not member.closed
                growth = memory["peak"] - memory["base"]
                left = memory["current"] - memory["base"]
                second_half = memory["current"] - at_half
                print(
                    f"\n[memory] {COUNT * SIZE / 2**20:.1f} MiB published in "
                    f"{record.took + feed.floods[-1].took:.2f} s; traced peak growth "
                    f"{growth / 2**20:.2f} MiB, left {left / 2**20:.2f} MiB, of which "
                    f"{second_half / 2**20:.2f} MiB in the second half"
                )
                bound = Bounds().max_bytes
                assert bound is not None
                # The log (1000 x 8 KiB here, 8 MiB at most) and a little: the entries a
                # writer holds (32), the stalled client's write buffer (64 KiB), the
                # publisher's timings (3,000 floats), one message in its forms.
                assert growth < bound + 2 * 2**20
                # The log was full at half-time: what follows replaces what it held.
                assert abs(second_half) < 2**20 // 2
        finally:
            stalled.abort()


# ------------------------------------------------------------- a client that never reads


async def fill(app: NexiosApp, member: Member, until: Any) -> int:
    """Publish to "room" until ``until(member)``; how many messages that took."""
    sent = 0
    while not until(member):
        assert sent < 10 * COUNT, "the stalled client's buffers never filled"
        await app.channels.publish("room", payload(sent))
        sent += 1
    return sent


@dataclass
class Watched:
    """The server's side of one connection, whose end (``connection_lost``) is awaited."""

    protocol: Any
    lost: asyncio.Event


def watch(server: Any, client_port: int) -> Watched:
    protocol = server_protocol(server, client_port)
    lost = asyncio.Event()
    connection_lost = protocol.connection_lost

    def record(exc: Exception | None) -> None:
        connection_lost(exc)
        lost.set()

    protocol.connection_lost = record
    return Watched(protocol, lost)


@pytest.fixture
def quick_abort(monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket that does not close (its peer reads nothing) is aborted after 0.1 s,
    not nexios.server.protocol.ABORT_AFTER (5 s)."""
    monkeypatch.setattr(nexios.server.protocol, "ABORT_AFTER", 0.1)


async def test_close_policy_releases_a_client_that_never_reads(
    live_server: Any, quick_abort: None
) -> None:
    """The 1013 Close cannot reach a client that reads nothing (it would wait behind the
    data its socket holds): the handler sees the disconnect at once, and the socket is
    aborted after the close timeout (uvicorn's 10 s, 0.1 s here) and ABORT_AFTER."""
    feed = make_feed(WebSocketConfig(ping_interval=None), log=Bounds(max_count=50))
    app = feed.app
    async with live_server(app) as server:
        stalled = await StalledClient.connect(server.port, "/feed?name=stalled")
        try:
            member = await feed.member("stalled")
            watched = watch(server, stalled.port)
            watched.protocol.close_timeout = 0.1
            await fill(app, member, lambda m: m.closed)
            assert app.channels.stats.closed_slow == 1
            assert await feed.left(1) == {"stalled": 1013}
            assert app.channels.member_of(await feed.connected("stalled")) is None
            assert app.channels.groups() == {}
            await within(watched.lost.wait())
            assert watched.protocol not in server.server.server_state.connections
        finally:
            stalled.abort()


async def test_keepalive_timeout_releases_a_client_that_never_reads(
    live_server: Any, quick_abort: None
) -> None:
    """The Pong cannot come from a client that reads nothing: the keepalive timeout
    (called here directly, so that nothing depends on timing) reaches the handler as a
    disconnect with 1011, the connection is unregistered, and the socket, whose buffer
    cannot drain, is aborted after ABORT_AFTER."""
    feed = make_feed(WebSocketConfig(ping_interval=None))
    app = feed.app
    async with live_server(app) as server:
        stalled = await StalledClient.connect(server.port, "/feed?name=stalled")
        try:
            member = await feed.member("stalled")
            # Its socket is full: it is behind in the log, its writer waits for room.
            await fill(app, member, lambda m: m.behind)
            watched = watch(server, stalled.port)
            assert watched.protocol.transport.get_write_buffer_size() > 0
            watched.protocol.keepalive_timeout()
            assert await feed.left(1) == {"stalled": 1011}
            assert app.channels.member_of(await feed.connected("stalled")) is None
            assert app.channels.groups() == {}
            await within(watched.lost.wait())
            assert watched.protocol not in server.server.server_state.connections
        finally:
            stalled.abort()


async def test_no_abort_is_left_pending_once_a_connection_is_closed(live_server: Any) -> None:
    feed = make_feed(WebSocketConfig(ping_interval=None))
    async with live_server(feed.app) as server:
        async with connect(server.ws + "/feed?name=a", ping_interval=None) as client:
            await feed.connected("a")
            watched = watch(server, client.transport.get_extra_info("sockname")[1])
        await within(watched.lost.wait())
        assert getattr(watched.protocol.transport, "_abort", None) is None
        assert await feed.left(1) == {"a": 1000}
