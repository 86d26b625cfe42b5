"""A client that stops reading, on the real server: it loses messages, nobody else does.

Each test serves a ``NexiosApp`` with the ``live_server`` fixture (uvicorn with the nexios
protocol, in the test's event loop), connects healthy clients (``picows``, a fast client)
and one slow client that completes the handshake and then reads nothing, and publishes a
stream of ~4 KiB messages from the server side. The slow client's socket buffers fill
(its receive buffer is made small), uvicorn pauses writing to it, its writer blocks, and
its outbox fills: from then on its slow-consumer policy decides, while the healthy
clients get every message, in order.

The publisher is paced by the healthy clients only: it publishes a batch (half an outbox)
then waits, bounded, until every healthy client has it. A fan-out that waited on the slow
client would stall that wait and fail the test; no assertion is about time. What the
handler sees (its WebSocket, its disconnect) comes through ``asyncio.Queue``s; every wait
is bounded (`within`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

import nexios.server
from nexios import NexiosApp, WebSocket, WebSocketConfig
from nexios.channels import Outbox
from nexios.channels.outbox import SLOW_CONSUMER_CLOSE
from nexios.exceptions import WebSocketDisconnect

try:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
except ImportError:  # pragma: no cover - picows is a test dependency
    # As for Redis (conftest.py): skipped on a developer's machine, a failure in CI.
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        raise
    pytest.skip("picows is not installed: pip install picows", allow_module_level=True)

TIMEOUT = 5.0
SIZE = 4096  # bytes per message
HEALTHY = 20
COUNT = 3000  # messages: 3000 x 4 KiB = 12 MiB per client, 250 MiB in all
OUTBOX = 32
BATCH = OUTBOX // 2
# The slow client's socket receive buffer (the kernel doubles it). The server's send
# buffer still grows (autotuning, up to net.ipv4.tcp_wmem's 4 MiB): here its outbox
# starts dropping after ~735 messages (2.9 MiB), well within COUNT (12 MiB).
SLOW_RCVBUF = 4096
FILLER = "x" * (SIZE - 8)


async def within(awaitable: Awaitable[Any], timeout: float = TIMEOUT) -> Any:
    return await asyncio.wait_for(awaitable, timeout)


def payload(i: int) -> str:
    """Message ``i``: its number in 8 digits, then filler up to SIZE bytes."""
    return f"{i:08d}{FILLER}"


# ---------------------------------------------------------------------------- the app


@dataclass
class Feed:
    """An app whose connections stay open until the client leaves; what its handlers saw."""

    app: NexiosApp
    joined: asyncio.Queue[tuple[str, WebSocket]] = field(default_factory=asyncio.Queue)
    # (name, close code) from the "disconnect" listener, which runs once the connection
    # has been unregistered from the channel layer.
    gone: asyncio.Queue[tuple[str, int | None]] = field(default_factory=asyncio.Queue)
    sockets: dict[str, WebSocket] = field(default_factory=dict)

    async def connected(self, name: str) -> WebSocket:
        """The server side of the connection the client named ``name`` (in its query)."""
        while name not in self.sockets:
            joined, ws = await within(self.joined.get())
            self.sockets[joined] = ws
        return self.sockets[name]

    async def left(self, n: int) -> dict[str, int | None]:
        """Wait until ``n`` connections have ended; their names and close codes."""
        return dict([await within(self.gone.get()) for _ in range(n)])


def make_feed(config: WebSocketConfig, group: str | None = None, **routes: WebSocketConfig) -> Feed:
    """``/feed`` with the app's config, plus ``/<name>`` for each route-level config.

    ``group``: the handler also joins it (else the connection is only in the app's
    router group, which ``app.broadcast`` reaches).
    """
    # A broker hub of its own: nothing else in this process shares it.
    app = NexiosApp(websocket_config=config, broker=f"memory://slow-{uuid.uuid4().hex}")
    feed = Feed(app)

    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        if group is not None:
            await ws.join(group)
        feed.joined.put_nowait((ws.query_params.get("name", ""), ws))
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await ws.receive()

    @app.on("disconnect")
    async def on_disconnect(ws: WebSocket) -> None:
        feed.gone.put_nowait((ws.query_params.get("name", ""), ws.close_code))

    app.add_ws_route("/feed", handler)
    for path, route_config in routes.items():
        app.add_ws_route(f"/{path}", handler, config=route_config)
    return feed


# ---------------------------------------------------------------------------- healthy clients


class Progress:
    """How far the healthy clients got; `reached` waits until all have ``target``."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.target = 0
        self.missing = 0
        self.done = asyncio.Event()
        self.done.set()

    def arrived(self, count: int) -> None:
        if count == self.target:
            self.missing -= 1
            if self.missing == 0:
                self.done.set()

    async def reached(self, target: int) -> None:
        """Wait, bounded, until every healthy client has received ``target`` messages."""
        self.target = target
        self.missing = self.clients
        self.done.clear()
        await within(self.done.wait())


class Healthy(WSListener):  # type: ignore[misc]
    """A picows client that reads everything as it comes and checks the order."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress
        self.count = 0
        self.out_of_order: list[tuple[int, int]] = []
        self.bad_frames = 0
        self.close_code: int | None = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            if not frame.fin or frame.payload_size != SIZE:
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


# picows grows its read buffer (by doubling, from 16 KiB) whenever a read fills it; a
# batch in flight is at most 16 x 4 KiB, so with 256 KiB from the start it never grows
# while memory is traced, and the figures are the server's, not the clients' buffers.
READ_BUFFER = 256 * 1024


@contextlib.asynccontextmanager
async def healthy_clients(url: str, n: int) -> AsyncIterator[tuple[Progress, list[Healthy]]]:
    """``n`` picows clients on ``url``, named h0..h<n-1>; disconnected on exit."""
    progress = Progress(n)
    connections: list[tuple[WSTransport, Healthy]] = []
    try:
        for i in range(n):
            connection = await within(
                ws_connect(
                    lambda: Healthy(progress),
                    f"{url}?name=h{i}",
                    websocket_handshake_timeout=TIMEOUT,
                    read_buffer_init_size=READ_BUFFER,
                )
            )
            connections.append(connection)
        yield progress, [listener for _, listener in connections]
    finally:
        for transport, _ in connections:
            transport.disconnect()
        for transport, _ in connections:
            await within(transport.wait_disconnected())


def assert_complete(listeners: list[Healthy], count: int) -> None:
    for listener in listeners:
        assert listener.out_of_order == []
        assert listener.bad_frames == 0
        assert listener.close_code is None
        assert listener.count == count


# ---------------------------------------------------------------------------- slow clients


class RawSlowClient:
    """A WebSocket client on a bare socket with a small receive buffer: it completes the
    handshake, then reads nothing until told to. Frames are parsed here (the server does
    not mask them)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, port: int, path: str) -> RawSlowClient:
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

    async def read_messages(self, n: int) -> list[int]:
        """Read ``n`` messages; their numbers."""
        seqs: list[int] = []
        while len(seqs) < n:
            opcode, data = await self.frame()
            assert opcode == 0x1, f"expected a text frame, got opcode {opcode}"
            assert len(data) == SIZE
            seqs.append(int(data[:8]))
        return seqs

    async def read_until_close(self) -> tuple[list[int], tuple[int, str]]:
        """Read every message up to the server's Close: their numbers, and the close."""
        seqs: list[int] = []
        while True:
            opcode, data = await self.frame()
            if opcode == 0x8:
                (code,) = struct.unpack("!H", data[:2])
                return seqs, (code, data[2:].decode())
            assert opcode == 0x1, f"expected a text frame, got opcode {opcode}"
            assert len(data) == SIZE
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


@contextlib.asynccontextmanager
async def websockets_client(url: str) -> AsyncIterator[ClientConnection]:
    async with connect(url, ping_interval=None, open_timeout=TIMEOUT, close_timeout=TIMEOUT) as c:
        yield c


# ---------------------------------------------------------------------------- the stream


@dataclass
class Stream:
    """What happened to the slow client's outbox while the stream was published."""

    max_waiting: int = 0  # most messages waiting in it, checked after every publish
    first_drop: int | None = None  # the message whose publish first dropped one
    closed_at: int | None = None  # the message whose publish closed it


async def publish_stream(
    publish: Any, progress: Progress, slow: Outbox, count: int = COUNT, batch: int = BATCH
) -> Stream:
    """Publish messages 0..count-1, ``batch`` at a time, each batch received by every
    healthy client before the next; watch the slow outbox after every publish."""
    stream = Stream()
    for start in range(0, count, batch):
        end = min(start + batch, count)
        for i in range(start, end):
            await publish(payload(i))
            stream.max_waiting = max(stream.max_waiting, len(slow.queue))
            if stream.first_drop is None and slow.dropped:
                stream.first_drop = i
            if stream.closed_at is None and slow.closed:
                stream.closed_at = i
        await progress.reached(end)
    return stream


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


def names(n: int) -> set[str]:
    return {f"h{i}" for i in range(n)}


# ---------------------------------------------------------------------------- tests


async def test_one_slow_client_never_slows_the_others(live_server: Any) -> None:
    """drop_oldest (the default), through app.broadcast: the healthy clients get all 3000
    messages in order; the slow one loses messages, never has more than 32 waiting, and
    gets the latest ones; the server's memory does not grow with what it does not read."""
    feed = make_feed(WebSocketConfig(outbox_size=OUTBOX, ping_interval=None))
    app = feed.app
    async with live_server(app) as server:
        slow_client = await RawSlowClient.connect(server.port, "/feed?name=slow")
        try:
            slow_ws = await feed.connected("slow")
            slow = app.channels.outbox_of(slow_ws)
            assert slow is not None
            assert (slow.maxsize, slow.policy) == (OUTBOX, "drop_oldest")
            async with healthy_clients(server.ws + "/feed", HEALTHY) as (progress, listeners):
                assert app.channels.groups() == {"nexios:app": HEALTHY + 1}
                with traced() as memory:
                    stream = await publish_stream(app.broadcast, progress, slow)
                assert_complete(listeners, COUNT)

                # Memory. Were the outbox unbounded, the slow client's unread messages
                # alone would hold ~9 MiB (12 MiB sent, ~3 MiB absorbed by the kernel's
                # socket buffers, which tracemalloc does not see): measured 9.6 MiB with
                # the slow outbox's maxsize forced to 10**9. tracemalloc traces the whole
                # process, clients included; measured here: peak growth 0.25 MiB, 0.24 MiB
                # left at the end: the slow client's 32 waiting messages (~130 KiB) and
                # uvicorn's write buffer for it (64 KiB and a message). The bound, a
                # quarter of what each client was sent (3 MiB), has a 12x margin.
                growth = memory["peak"] - memory["base"]
                print(
                    f"\n[drop_oldest] {COUNT * SIZE / 2**20:.1f} MiB sent to each client; "
                    f"traced peak growth {growth / 2**20:.2f} MiB, left "
                    f"{(memory['current'] - memory['base']) / 2**20:.2f} MiB; the slow "
                    f"outbox dropped {slow.dropped}, the first at message {stream.first_drop}"
                )
                assert growth < COUNT * SIZE // 4

                # The slow client lost messages, only it did, and it never had more than
                # 32 waiting.
                assert stream.first_drop is not None
                assert slow.dropped > 0
                assert stream.max_waiting <= OUTBOX
                assert app.channels.stats.dropped == slow.dropped
                assert app.channels.stats.closed_slow == 0
                assert app.channels.stats.published == COUNT
                # drop_oldest queues every new message (pushing an old one out).
                assert app.channels.stats.delivered == COUNT * (HEALTHY + 1)
                for ws in app.channels.members("nexios:app"):
                    outbox = app.channels.outbox_of(ws)
                    assert outbox is not None
                    assert outbox.dropped == (slow.dropped if ws is slow_ws else 0)

                # The slow client reads at last: every message up to the first drop's
                # victim (the oldest of the 32 then waiting), then what survived, in
                # order, ending with the latest 32.
                seqs = await slow_client.read_messages(COUNT - slow.dropped)
                first_lost = stream.first_drop - OUTBOX
                assert seqs[:first_lost] == list(range(first_lost))
                assert first_lost not in seqs
                assert seqs == sorted(set(seqs))
                assert seqs[-OUTBOX:] == list(range(COUNT - OUTBOX, COUNT))
        finally:
            slow_client.abort()
        assert set(await feed.left(HEALTHY + 1)) == names(HEALTHY) | {"slow"}
        assert app.channels.groups() == {}


async def test_close_policy_closes_the_slow_client_only(live_server: Any) -> None:
    """slow_consumer="close", through a group the handler joins: the slow client is
    closed with 1013 and forgotten at once; the healthy ones get everything."""
    config = WebSocketConfig(outbox_size=OUTBOX, slow_consumer="close", ping_interval=None)
    feed = make_feed(config, group="room")
    app = feed.app
    async with live_server(app) as server:
        slow_client = await RawSlowClient.connect(server.port, "/feed?name=slow")
        try:
            slow_ws = await feed.connected("slow")
            slow = app.channels.outbox_of(slow_ws)
            assert slow is not None
            assert slow.policy == "close"
            async with healthy_clients(server.ws + "/feed", HEALTHY) as (progress, listeners):
                everyone = {"nexios:app": HEALTHY + 1, "room": HEALTHY + 1}
                assert app.channels.groups() == everyone

                async def publish(message: str) -> int:
                    return await app.channels.publish("room", message)

                stream = await publish_stream(publish, progress, slow)
                assert_complete(listeners, COUNT)
                assert stream.closed_at is not None
                assert stream.max_waiting <= OUTBOX
                print(f"\n[close] the slow client was closed at message {stream.closed_at}")
                assert app.channels.stats.closed_slow == 1
                # Queued for the slow client: every message before the one that found
                # its outbox full.
                assert app.channels.stats.delivered == COUNT * HEALTHY + stream.closed_at
                # Forgotten at once: no longer fanned out to, in any group.
                assert app.channels.groups() == {"nexios:app": HEALTHY, "room": HEALTHY}
                assert slow_ws not in app.channels.members("room")
                assert slow.closed
                assert len(slow.queue) == 0
                # The server did not wait for room in the slow client's socket to close:
                # its handler saw the disconnect (1013), and the connection is unregistered.
                assert await feed.left(1) == {"slow": 1013}
                assert app.channels.outbox_of(slow_ws) is None
                assert slow_ws.close_code == 1013

                # The slow client reads again: the messages that had reached its socket
                # (all from 0; the 32 waiting and the one its writer was sending are
                # dropped), then the server's Close, 1013.
                seqs, close = await slow_client.read_until_close()
                assert close == SLOW_CONSUMER_CLOSE
                assert seqs == list(range(stream.closed_at - OUTBOX - 1))
                # 32 waiting + the one that overflowed (the one in flight is not counted).
                assert app.channels.stats.dropped == slow.dropped == OUTBOX + 1
                await slow_client.send_close(1013)
        finally:
            slow_client.abort()
        assert set(await feed.left(HEALTHY)) == names(HEALTHY)
        assert app.channels.groups() == {}


async def test_route_config_drop_newest_overrides_the_apps(live_server: Any) -> None:
    """A route's WebSocketConfig(outbox_size, slow_consumer) replaces the app's for the
    connections it serves, for the groups they join too; the slow client here is a
    ``websockets`` client whose transport stops reading."""
    route_size = 8
    feed = make_feed(
        WebSocketConfig(outbox_size=OUTBOX, slow_consumer="close", ping_interval=None),
        group="ticker",
        newest=WebSocketConfig(outbox_size=route_size, slow_consumer="drop_newest"),
    )
    app = feed.app
    healthy = 5
    async with live_server(app) as server:
        # The same handler on /feed has the app's settings.
        async with websockets_client(server.ws + "/feed?name=app-default"):
            default = app.channels.outbox_of(await feed.connected("app-default"))
            assert default is not None
            assert (default.maxsize, default.policy) == (OUTBOX, "close")
        assert await feed.left(1) == {"app-default": 1000}

        slow_client = await paused_websockets_client(server.port, "/newest?name=slow")
        try:
            slow_ws = await feed.connected("slow")
            slow = app.channels.outbox_of(slow_ws)
            assert slow is not None
            assert (slow.maxsize, slow.policy) == (route_size, "drop_newest")
            async with healthy_clients(server.ws + "/newest", healthy) as (progress, listeners):
                assert app.channels.groups() == {"nexios:app": healthy + 1, "ticker": healthy + 1}

                async def publish(message: str) -> int:
                    return await app.channels.publish("ticker", message)

                stream = await publish_stream(publish, progress, slow, batch=route_size // 2)
                assert_complete(listeners, COUNT)
                assert stream.first_drop is not None
                assert stream.max_waiting <= route_size
                assert not slow.closed  # not the app's "close"
                assert app.channels.stats.closed_slow == 0
                assert app.channels.stats.dropped == slow.dropped
                # drop_newest refuses the new message: it is not counted as delivered.
                assert app.channels.stats.delivered == COUNT * (healthy + 1) - slow.dropped

                # Resumed, the slow client gets every message up to the first dropped
                # one (the 8 then waiting were kept), then what survived, in order.
                slow_client.transport.resume_reading()
                got = [
                    int((await within(slow_client.recv()))[:8]) for _ in range(COUNT - slow.dropped)
                ]
                assert got[: stream.first_drop] == list(range(stream.first_drop))
                assert stream.first_drop not in got
                assert got == sorted(set(got))
        finally:
            await slow_client.close()
        assert set(await feed.left(healthy + 1)) == names(healthy) | {"slow"}


async def test_healthy_clients_are_served_while_the_slow_one_is_saturated(
    live_server: Any,
) -> None:
    """With the slow client's outbox full and dropping, a publish runs to completion in
    one step (fan-out only appends: nothing in it waits on a socket), each message
    reaches every healthy client, and an echo on another route is answered, each within
    a bounded wait. Nothing here measures time."""
    feed = make_feed(WebSocketConfig(outbox_size=OUTBOX, ping_interval=None), group="room")
    app = feed.app

    @app.ws_route("/echo")
    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        async for text in ws.iter_text():
            await ws.send_text(text)

    async with live_server(app) as server:
        slow_client = await RawSlowClient.connect(server.port, "/feed?name=slow")
        try:
            slow = app.channels.outbox_of(await feed.connected("slow"))
            assert slow is not None
            async with healthy_clients(server.ws + "/feed", HEALTHY) as (progress, listeners):
                # Saturate the slow client: publish until its outbox drops.
                sent = 0
                while not slow.dropped:
                    assert sent < COUNT, "the slow client's buffers never filled"
                    for _ in range(BATCH):
                        await app.channels.publish("room", payload(sent))
                        sent += 1
                    await progress.reached(sent)
                saturated_at = slow.dropped
                async with websockets_client(server.ws + "/echo") as echoer:
                    for _ in range(100):
                        step = app.channels.publish("room", payload(sent))
                        with pytest.raises(StopIteration) as done:
                            step.send(None)
                        assert done.value.value == HEALTHY + 1
                        sent += 1
                        await progress.reached(sent)
                        await echoer.send(str(sent))
                        assert await within(echoer.recv()) == str(sent)
                assert_complete(listeners, sent)
                assert slow.dropped > saturated_at
                assert len(slow.queue) <= OUTBOX
        finally:
            slow_client.abort()


# ------------------------------------------------------------- a client that never reads


async def fill_until_dropping(app: NexiosApp, slow: Outbox) -> int:
    """Broadcast until the slow outbox drops (or is closed): its socket and uvicorn's
    write buffer are full. How many messages that took."""
    sent = 0
    while not (slow.dropped or slow.closed):
        assert sent < COUNT, "the slow client's buffers never filled"
        await app.broadcast(payload(sent))
        sent += 1
        if sent % BATCH == 0:
            await asyncio.sleep(0)  # let its writer write
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
    not nexios.server.ABORT_AFTER (5 s)."""
    monkeypatch.setattr(nexios.server, "ABORT_AFTER", 0.1)


async def test_close_policy_releases_a_client_that_never_reads(
    live_server: Any, quick_abort: None
) -> None:
    """The 1013 Close cannot reach a client that reads nothing (it would wait behind the
    data its socket holds): the handler sees the disconnect at once, and the socket is
    aborted after the close timeout (uvicorn's 10 s, 0.1 s here) and ABORT_AFTER."""
    config = WebSocketConfig(outbox_size=OUTBOX, slow_consumer="close", ping_interval=None)
    feed = make_feed(config)
    app = feed.app
    async with live_server(app) as server:
        slow_client = await RawSlowClient.connect(server.port, "/feed?name=slow")
        try:
            slow_ws = await feed.connected("slow")
            slow = app.channels.outbox_of(slow_ws)
            assert slow is not None
            watched = watch(server, slow_client.port)
            watched.protocol.close_timeout = 0.1
            await fill_until_dropping(app, slow)
            assert app.channels.stats.closed_slow == 1
            assert await feed.left(1) == {"slow": 1013}
            assert app.channels.outbox_of(slow_ws) is None
            assert app.channels.groups() == {}
            await within(watched.lost.wait())
            assert watched.protocol not in server.server.server_state.connections
        finally:
            slow_client.abort()


async def test_keepalive_timeout_releases_a_client_that_never_reads(
    live_server: Any, quick_abort: None
) -> None:
    """The Pong cannot come from a client that reads nothing: the keepalive timeout
    (called here directly, so that nothing depends on timing) reaches the handler as a
    disconnect with 1011, the connection is unregistered, and the socket, whose buffer
    cannot drain, is aborted after ABORT_AFTER."""
    feed = make_feed(WebSocketConfig(outbox_size=OUTBOX, ping_interval=None))
    app = feed.app
    async with live_server(app) as server:
        slow_client = await RawSlowClient.connect(server.port, "/feed?name=slow")
        try:
            slow_ws = await feed.connected("slow")
            slow = app.channels.outbox_of(slow_ws)
            assert slow is not None
            await fill_until_dropping(app, slow)
            watched = watch(server, slow_client.port)
            assert watched.protocol.transport.get_write_buffer_size() > 0
            watched.protocol.keepalive_timeout()
            assert await feed.left(1) == {"slow": 1011}
            assert app.channels.outbox_of(slow_ws) is None
            assert app.channels.groups() == {}
            await within(watched.lost.wait())
            assert watched.protocol not in server.server.server_state.connections
        finally:
            slow_client.abort()


async def test_no_abort_is_left_pending_once_a_connection_is_closed(live_server: Any) -> None:
    feed = make_feed(WebSocketConfig(ping_interval=None))
    async with live_server(feed.app) as server:
        async with websockets_client(server.ws + "/feed?name=a") as client:
            await feed.connected("a")
            watched = watch(server, client.transport.get_extra_info("sockname")[1])
        await within(watched.lost.wait())
        assert getattr(watched.protocol.transport, "_abort", None) is None
        assert await feed.left(1) == {"a": 1000}
