"""Thousands of connections come and go: nothing stays behind.

A route that exercises what a connection leaves in the framework (app, router and route
middleware; ``connect``/``message``/``disconnect`` listeners on the app and the router;
two groups, one shared per client slot and one of its own; a publish through its outbox
writer) serves thousands of short connections, 50 at a time:

* on the real server (``live_server``) with ``picows`` clients that close cleanly;
* on the real server with raw-socket clients that drop the TCP connection without a
  Close frame (half with a FIN, half with a RST);
* through ``nexios.testing.TestClient`` (its async form, on the test's loop).

Afterwards: no group, no member, no outbox (``app.channels``), no connection or task
left in uvicorn's ``server_state``, as many asyncio tasks as before the first
connection, and every handler, middleware and listener ran to its end. Memory is
measured with ``tracemalloc`` (whole process, clients included) from after a warm-up
batch (which fills the caches and lets dicts reach their working size) to the end; the
growth per connection must stay under ``BYTES_PER_CYCLE`` (1 KiB). A connection that
stays behind costs tens of KiB (about 60 KiB per open connection here, server and client
together) and its WebSocket with its scope, state and outbox several KiB, so keeping any
of those fails the test; a few small objects per connection would not, which is what the
exact checks (groups, members, outboxes, ids, tasks) are for. What remains after the
warm-up is hash tables reaching their working size: over further batches of 2000 the
growth falls to well under 1 B per connection. The figures are printed (``pytest -s``).

Waiting for something to finish polls it up to a deadline (`eventually`); no fixed sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import socket
import struct
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from nexios import NexiosApp, WebSocket, WebSocketConfig, WSRouter
from nexios.testing import TestClient

try:
    from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
except ImportError:  # pragma: no cover - picows is a test dependency
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        raise
    pytest.skip("picows is not installed: pip install picows", allow_module_level=True)

TIMEOUT = 5.0
CONCURRENCY = 50
WARM_UP = 200  # connections before memory is measured
CYCLES = 2000  # connections measured, on the real server
TESTCLIENT_CYCLES = 1000
ABRUPT_CYCLES = 1000
# Whole-process growth allowed per connection, after the warm-up (see the docstring).
BYTES_PER_CYCLE = 1024


async def within(awaitable: Awaitable[Any], timeout: float = TIMEOUT) -> Any:
    return await asyncio.wait_for(awaitable, timeout)


async def eventually(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` until it holds, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        await asyncio.sleep(0.001)


# ---------------------------------------------------------------------------- the app


@dataclass
class Counters:
    """How many connections each piece saw start and end."""

    counts: dict[str, int] = field(default_factory=dict)
    target: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    close_codes: dict[int | None, int] = field(default_factory=dict)

    def add(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def ended(self, code: int | None) -> None:
        self.add("disconnect")
        self.close_codes[code] = self.close_codes.get(code, 0) + 1
        if self.counts["disconnect"] == self.target:
            self.done.set()

    def expect(self, total: int) -> None:
        """Wait (with `all_ended`) for ``total`` disconnects in all."""
        self.target = total
        self.done.clear()
        if self.counts.get("disconnect", 0) >= total:
            self.done.set()

    async def all_ended(self) -> None:
        await within(self.done.wait(), 30)


def make_app() -> tuple[NexiosApp, Counters]:
    counters = Counters()
    config = WebSocketConfig(ping_interval=None)
    # A broker hub of its own: nothing else in this process shares it.
    app = NexiosApp(websocket_config=config, broker=f"memory://leaks-{uuid.uuid4().hex}")

    async def app_middleware(ws: WebSocket, call_next: Any) -> None:
        counters.add("app middleware")
        ws.state.n = ws.query_params.get("n")
        try:
            await call_next()
        finally:
            counters.add("app middleware done")

    async def router_middleware(ws: WebSocket, call_next: Any) -> None:
        ws.id = f"client-{uuid.uuid4().hex}"
        await call_next()

    async def route_middleware(ws: WebSocket, call_next: Any) -> None:
        ws.state.route_seen = True
        await call_next()

    app.add_ws_middleware(app_middleware)
    router = WSRouter(prefix="/chat", middleware=[router_middleware])

    @app.on("connect")
    async def app_connect(ws: WebSocket) -> None:
        counters.add("connect")

    @router.on("message")
    async def router_message(ws: WebSocket, message: Any) -> None:
        counters.add("message")

    @router.on("disconnect")
    async def router_disconnect(ws: WebSocket) -> None:
        counters.add("router disconnect")

    @app.on("disconnect")
    async def app_disconnect(ws: WebSocket) -> None:
        counters.ended(ws.close_code)

    @router.ws_route("/{room}", middleware=[route_middleware])
    async def room(ws: WebSocket, room: str) -> None:
        await ws.accept()
        try:
            await ws.join(room)
            await ws.join(f"own-{ws.id}")
            async for text in ws.iter_text():
                # Back to the client through the group and its outbox writer.
                await ws.publish(room, text)
        finally:
            counters.add("handler done")

    app.mount_ws_router(router)
    return app, counters


def assert_nothing_left(app: NexiosApp, counters: Counters, total: int) -> None:
    layer = app.channels
    assert layer.groups() == {}
    assert layer.members("slot-0") == []
    assert layer._registry.members == {}  # no member
    assert layer._registry.by_id == {}  # no id
    for what in ("app middleware", "app middleware done", "connect", "handler done"):
        assert counters.counts.get(what) == total, (what, counters.counts)
    assert counters.counts.get("router disconnect") == total, counters.counts
    assert counters.counts.get("disconnect") == total, counters.counts


@contextlib.contextmanager
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def settled_memory() -> int:
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    return current


def report(label: str, before: int, after: int, cycles: int, seconds: float, **extra: Any) -> float:
    per_cycle = (after - before) / cycles
    details = " ".join(f"{k}={v}" for k, v in extra.items())
    print(
        f"\n[{label}] {cycles} connections in {seconds:.2f} s "
        f"({cycles / seconds:.0f}/s); memory {before / 1024:.0f} KiB -> {after / 1024:.0f} KiB: "
        f"{per_cycle:+.1f} B per connection {details}"
    )
    return per_cycle


# ---------------------------------------------------------------------------- clients


class Echo(WSListener):  # type: ignore[misc]
    """A picows client that sends one message and waits for it to come back."""

    def __init__(self) -> None:
        super().__init__()
        self.echoed = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT and not self.echoed.done():
            self.echoed.set_result(frame.get_payload_as_ascii_text())
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()


async def picows_cycle(url: str) -> None:
    transport, listener = await within(ws_connect(Echo, url, websocket_handshake_timeout=TIMEOUT))
    try:
        text = uuid.uuid4().hex
        transport.send(WSMsgType.TEXT, text.encode())
        assert await within(listener.echoed) == text
        transport.send_close(WSCloseCode.OK)
        await within(transport.wait_disconnected())
    finally:
        transport.disconnect()


def masked_text(payload: bytes) -> bytes:
    key = os.urandom(4)
    return (
        bytes([0x81, 0x80 | len(payload)])
        + key
        + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    )


async def abrupt_cycle(port: int, path: str, reset: bool) -> None:
    """Handshake, one echo, then drop the TCP connection without a Close frame: a FIN,
    or (``reset``) a RST."""
    reader, writer = await within(asyncio.open_connection("127.0.0.1", port))
    try:
        key = base64.b64encode(os.urandom(16))
        writer.write(
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await within(reader.readuntil(b"\r\n\r\n"))
        assert head.startswith(b"HTTP/1.1 101 "), head
        text = uuid.uuid4().hex.encode()
        writer.write(masked_text(text))
        assert await within(reader.readexactly(2 + len(text))) == bytes([0x81, len(text)]) + text
    finally:
        if reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


async def run_cycles(total: int, cycle: Callable[[int, int], Awaitable[None]]) -> None:
    """``total`` cycles by CONCURRENCY workers: ``cycle(i, worker)``, i = 0 .. total-1.

    Each worker's connections use the room ``slot-<worker>``, one at a time, so that a
    client's echo is its own message."""
    queue = iter(range(total))

    async def worker(w: int) -> None:
        for i in queue:
            await cycle(i, w)

    await asyncio.gather(*(worker(w) for w in range(CONCURRENCY)))


# ---------------------------------------------------------------------------- tests


async def drained(server: Any, baseline: int) -> None:
    state = server.server.server_state
    await eventually(lambda: not state.connections, "every server connection closed")
    await eventually(lambda: not state.tasks, "every server task done")
    await eventually(
        lambda: len(asyncio.all_tasks()) == baseline,
        f"back to {baseline} asyncio tasks",
    )


async def test_connect_disconnect_cycles_on_the_real_server(live_server: Any) -> None:
    app, counters = make_app()
    with traced():
        async with live_server(app) as server:
            baseline = len(asyncio.all_tasks())

            def cycle(i: int, w: int) -> Awaitable[None]:
                return picows_cycle(f"{server.ws}/chat/slot-{w}?n={i}")

            counters.expect(WARM_UP)
            await run_cycles(WARM_UP, cycle)
            await counters.all_ended()
            await drained(server, baseline)
            before = settled_memory()

            started = time.monotonic()
            counters.expect(WARM_UP + CYCLES)
            await run_cycles(CYCLES, cycle)
            await counters.all_ended()
            seconds = time.monotonic() - started
            await drained(server, baseline)
            after = settled_memory()

            assert_nothing_left(app, counters, WARM_UP + CYCLES)
            assert counters.counts["message"] == WARM_UP + CYCLES
            assert counters.close_codes == {1000: WARM_UP + CYCLES}
            assert server.errors == []
    per_cycle = report("real server, clean close", before, after, CYCLES, seconds)
    assert per_cycle < BYTES_PER_CYCLE


async def test_abrupt_disconnects_on_the_real_server(live_server: Any) -> None:
    app, counters = make_app()
    with traced():
        async with live_server(app) as server:
            baseline = len(asyncio.all_tasks())

            def cycle(i: int, w: int) -> Awaitable[None]:
                return abrupt_cycle(server.port, f"/chat/slot-{w}?n={i}", reset=i % 2 == 1)

            counters.expect(WARM_UP)
            await run_cycles(WARM_UP, cycle)
            await counters.all_ended()
            await drained(server, baseline)
            before = settled_memory()

            started = time.monotonic()
            counters.expect(WARM_UP + ABRUPT_CYCLES)
            await run_cycles(ABRUPT_CYCLES, cycle)
            await counters.all_ended()
            seconds = time.monotonic() - started
            await drained(server, baseline)
            after = settled_memory()

            assert_nothing_left(app, counters, WARM_UP + ABRUPT_CYCLES)
            # No Close frame came: the handler hears of a lost connection.
            assert set(counters.close_codes) <= {1005, 1006}, counters.close_codes
            assert server.errors == []
    per_cycle = report(
        "real server, abrupt", before, after, ABRUPT_CYCLES, seconds, codes=counters.close_codes
    )
    assert per_cycle < BYTES_PER_CYCLE


async def test_connect_disconnect_cycles_through_the_testclient() -> None:
    app, counters = make_app()
    with traced():
        async with TestClient(app) as client:
            baseline = len(asyncio.all_tasks())

            async def cycle(i: int, w: int) -> None:
                async with client.websocket_connect(f"/chat/slot-{w}?n={i}") as ws:
                    text = uuid.uuid4().hex
                    await ws.send_text(text)
                    assert await ws.receive_text() == text

            counters.expect(WARM_UP)
            await run_cycles(WARM_UP, cycle)
            await counters.all_ended()
            await eventually(lambda: len(asyncio.all_tasks()) == baseline, "tasks back")
            before = settled_memory()

            started = time.monotonic()
            counters.expect(WARM_UP + TESTCLIENT_CYCLES)
            await run_cycles(TESTCLIENT_CYCLES, cycle)
            await counters.all_ended()
            seconds = time.monotonic() - started
            await eventually(lambda: len(asyncio.all_tasks()) == baseline, "tasks back")
            after = settled_memory()

            assert_nothing_left(app, counters, WARM_UP + TESTCLIENT_CYCLES)
            assert counters.close_codes == {1000: WARM_UP + TESTCLIENT_CYCLES}
    per_cycle = report("TestClient", before, after, TESTCLIENT_CYCLES, seconds)
    assert per_cycle < BYTES_PER_CYCLE
