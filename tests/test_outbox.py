"""``Outbox`` and the ``ChannelLayer``'s fan-out to outboxes, without a server.

A `FakeWS` stands in for the WebSocket: ``_send`` records what the writer sends and can
be held at a gate (an ``asyncio.Event``) to play a client that reads slowly, or made to
raise as uvicorn does when the peer is gone. Every wait is bounded (`within`); nothing
synchronises on wall-clock sleeps, only on events and queues (``asyncio.sleep(0)`` merely
lets the writer tasks run).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable
from typing import Any

import pytest
from uvicorn.protocols.utils import ClientDisconnected

from nexios.channels import ChannelLayer, MemoryBroker, Outbox
from nexios.channels.outbox import POLICIES, SLOW_CONSUMER_CLOSE
from nexios.exceptions import WebSocketStateError
from nexios.types import Message
from nexios.websockets.base import WebSocketState

TIMEOUT = 5.0
LOGGER = "nexios.channels"


async def within(awaitable: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(awaitable, TIMEOUT)


async def settle(rounds: int = 20) -> None:
    """Let ready tasks (the writers) run a few loop iterations; synchronises nothing."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def msg(i: int) -> Message:
    return {"type": "websocket.send", "text": str(i)}


def texts(messages: list[Message]) -> list[int]:
    return [int(m["text"]) for m in messages]


class FakeWS:
    """What an outbox uses of a WebSocket: ``id``, ``scope``, ``application_state``,
    ``_send`` and ``close``."""

    def __init__(self, name: str = "ws-1") -> None:
        self.id = name
        self.scope: dict[str, Any] = {"type": "websocket", "path": f"/feed/{name}"}
        self.application_state = WebSocketState.CONNECTED
        self.sent: list[Message] = []
        self._arrived: asyncio.Queue[Message] = asyncio.Queue()
        # Closed: a send waits there (the client is not reading); `blocked` says one does.
        self.gate = asyncio.Event()
        self.gate.set()
        self.blocked = asyncio.Event()
        # Set: every send raises it (uvicorn's ClientDisconnected: the peer is gone).
        self.fail: BaseException | None = None
        self.close_error: BaseException | None = None
        self.closes: asyncio.Queue[tuple[int, str | None]] = asyncio.Queue()
        # No synchronous send (a server without nexios' send_nowait extension).
        self._send_nowait: Any = None

    async def _send(self, message: Message) -> None:
        if self.fail is not None:
            raise self.fail
        if not self.gate.is_set():
            self.blocked.set()
            await self.gate.wait()
            if self.fail is not None:
                raise self.fail
        self.sent.append(message)
        self._arrived.put_nowait(message)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.application_state = WebSocketState.DISCONNECTED
        self.closes.put_nowait((code, reason))
        if self.close_error is not None:
            raise self.close_error

    def stall(self) -> None:
        """The client stops reading: the next send blocks until `resume`."""
        self.gate.clear()
        self.blocked.clear()

    def resume(self) -> None:
        self.gate.set()

    async def sent_count(self, n: int) -> list[int]:
        """Wait until ``n`` messages were sent; their texts as ints."""

        async def wait() -> None:
            while len(self.sent) < n:
                await self._arrived.get()

        await within(wait())
        return texts(self.sent)


class DirectWS(FakeWS):
    """A connection on nexios' server: ``_send_nowait`` sends at once while the socket
    takes data (``writable``), and refuses (returns False) when it does not."""

    def __init__(self, name: str = "ws-1") -> None:
        super().__init__(name)
        self.writable = True
        self.frames: list[bytes | None] = []
        self.direct = 0
        self._send_nowait = self._direct

    def _direct(self, message: Message, frame: bytes | None) -> bool:
        if not self.writable:
            return False
        self.direct += 1
        self.frames.append(frame)
        self.sent.append(message)
        self._arrived.put_nowait(message)
        return True


class Recorder:
    """An outbox's ``report`` callback: ``report(outbox, event, count)``; records the
    events, and each with its count."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.counts: list[tuple[str, int]] = []

    def __call__(self, outbox: Outbox, event: str, count: int) -> None:
        self.events.append(event)
        self.counts.append((event, count))


def make(
    ws: FakeWS,
    maxsize: int = 4,
    policy: Any = "drop_oldest",
    report: Any = None,
    held: bool = False,
) -> tuple[Outbox, Recorder]:
    recorder = report if report is not None else Recorder()
    return Outbox(ws, maxsize, policy, recorder, held=held), recorder  # type: ignore[arg-type]


async def stalled_with_one_in_flight(ws: FakeWS, outbox: Outbox) -> None:
    """Stall the client, push message 0: the writer takes it and blocks sending it."""
    ws.stall()
    assert outbox.push(msg(0)) is True
    await within(ws.blocked.wait())
    assert len(outbox.queue) == 0  # 0 is in flight, not waiting


async def idle(outbox: Outbox, rounds: int = 50) -> None:
    """Let the writer run until nothing is under way (a few loop iterations)."""
    for _ in range(rounds):
        if outbox._task is None and outbox._pending is None:
            return
        await asyncio.sleep(0)
    raise AssertionError("the outbox is still sending")


def slow_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING and "too slowly" in r.getMessage()
    ]


# ---------------------------------------------------------------------------- basics


def test_arguments_are_checked() -> None:
    ws = FakeWS()
    with pytest.raises(ValueError, match="at least 1"):
        Outbox(ws, 0, "drop_oldest", Recorder())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Unknown slow-consumer policy 'bogus'"):
        Outbox(ws, 1, "bogus", Recorder())  # type: ignore[arg-type]
    assert POLICIES == ("drop_oldest", "drop_newest", "close")


async def test_a_send_that_does_not_wait_happens_in_push() -> None:
    ws = FakeWS()  # a server without nexios' send_nowait: the awaitable send is used
    outbox, report = make(ws, maxsize=2)
    for i in range(5):
        assert outbox.push(msg(i)) is True
    # Each send completed inside push: no task, nothing queued, none dropped.
    assert texts(ws.sent) == [0, 1, 2, 3, 4]
    assert outbox._task is None
    assert len(outbox.queue) == 0
    assert report.events == []


async def test_a_send_that_waits_is_finished_by_a_writer_in_order() -> None:
    ws = FakeWS()
    outbox, report = make(ws, maxsize=8)
    await stalled_with_one_in_flight(ws, outbox)
    assert outbox._task is None  # no task while the send waits for room
    for i in range(1, 5):
        assert outbox.push(msg(i)) is True  # queued behind the one in flight
    assert len(outbox.queue) == 4
    ws.resume()
    assert await ws.sent_count(5) == [0, 1, 2, 3, 4]
    await idle(outbox)  # the writer ended: an idle member holds no task
    assert outbox.push(msg(5)) is True
    assert texts(ws.sent) == [0, 1, 2, 3, 4, 5]
    assert outbox.dropped == 0
    assert report.events == []


async def test_sent_at_once_when_the_server_can() -> None:
    ws = DirectWS()
    outbox, report = make(ws, maxsize=2)
    frame = b"\x81\x01x"
    for i in range(5):
        assert outbox.push(msg(i), frame) is True
    # Sent inside push: no task, nothing queued, nothing dropped with a queue of 2.
    assert texts(ws.sent) == [0, 1, 2, 3, 4]
    assert ws.frames == [frame] * 5
    assert outbox._task is None
    assert len(outbox.queue) == 0
    assert outbox.dropped == 0
    assert report.events == []


async def test_order_is_kept_when_the_socket_is_full() -> None:
    ws = DirectWS()
    outbox, report = make(ws, maxsize=8)
    assert outbox.push(msg(0)) is True
    ws.writable = False  # the socket's buffer is full: the server refuses to send now
    ws.stall()  # and the awaitable send waits for room
    assert outbox.push(msg(1)) is True
    await within(ws.blocked.wait())  # the writer took 1 and waits for room
    ws.writable = True
    # A writer is running: later messages queue behind it, never overtake it.
    for i in range(2, 5):
        assert outbox.push(msg(i)) is True
    assert ws.direct == 1
    ws.resume()
    assert await ws.sent_count(5) == [0, 1, 2, 3, 4]
    await idle(outbox)
    # Caught up: sent at once again.
    assert outbox.push(msg(5)) is True
    assert texts(ws.sent) == [0, 1, 2, 3, 4, 5]
    assert ws.direct == 2
    assert report.events == []


async def test_a_closed_connection_is_not_sent_to_at_once() -> None:
    ws = DirectWS()
    outbox, report = make(ws)
    ws.application_state = WebSocketState.DISCONNECTED
    assert outbox.push(msg(0)) is True  # queued; the writer finds the connection gone
    writer = outbox._task
    assert writer is not None
    await within(asyncio.wait({writer}))
    assert ws.sent == []
    assert report.events == ["gone"]
    assert outbox.push(msg(1)) is False


async def test_a_full_outbox_holds_maxsize_and_the_one_in_flight() -> None:
    ws = FakeWS()
    outbox, _ = make(ws, maxsize=3, policy="drop_newest")
    await stalled_with_one_in_flight(ws, outbox)
    for i in range(1, 4):
        assert outbox.push(msg(i)) is True
    assert len(outbox.queue) == 3
    assert outbox.push(msg(4)) is False
    assert len(outbox.queue) == 3
    ws.resume()
    assert await ws.sent_count(4) == [0, 1, 2, 3]
    outbox.close()


# ---------------------------------------------------------------------------- policies


async def test_drop_oldest_keeps_the_latest(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    ws = FakeWS("slow-1")
    outbox, report = make(ws, maxsize=4, policy="drop_oldest")
    await stalled_with_one_in_flight(ws, outbox)
    for i in range(1, 5):
        assert outbox.push(msg(i)) is True
    # Full: each new message pushes the oldest waiting one out, and is itself queued.
    for i in range(5, 12):
        assert outbox.push(msg(i)) is True
        assert len(outbox.queue) == 4
    assert texts(list(outbox.queue)) == [8, 9, 10, 11]
    assert outbox.dropped == 7
    assert report.counts == [("dropped", 1)] * 7
    ws.resume()
    # The one in flight, then the latest four.
    assert await ws.sent_count(5) == [0, 8, 9, 10, 11]
    [warning] = slow_warnings(caplog)
    assert "WebSocket slow-1 (/feed/slow-1) reads too slowly" in warning
    assert "outbox of 4 is full; dropping the oldest messages" in warning
    assert "(policy 'drop_oldest')" in warning

    # A second episode on the same connection: counted and reported, not logged again.
    await within(ws.sent_count(5))
    ws.stall()
    assert outbox.push(msg(12)) is True
    await within(ws.blocked.wait())
    for i in range(13, 19):
        assert outbox.push(msg(i)) is True
    assert outbox.dropped == 9
    assert report.events == ["dropped"] * 9
    assert len(slow_warnings(caplog)) == 1
    ws.resume()
    assert await ws.sent_count(10) == [0, 8, 9, 10, 11, 12, 15, 16, 17, 18]
    outbox.close()


async def test_drop_newest_keeps_what_waits(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    ws = FakeWS("slow-2")
    outbox, report = make(ws, maxsize=4, policy="drop_newest")
    await stalled_with_one_in_flight(ws, outbox)
    for i in range(1, 5):
        assert outbox.push(msg(i)) is True
    for i in range(5, 12):
        assert outbox.push(msg(i)) is False
    assert texts(list(outbox.queue)) == [1, 2, 3, 4]
    assert outbox.dropped == 7
    assert report.events == ["dropped"] * 7
    ws.resume()
    assert await ws.sent_count(5) == [0, 1, 2, 3, 4]
    # Drained: new messages are queued (and sent) again.
    assert outbox.push(msg(12)) is True
    assert await ws.sent_count(6) == [0, 1, 2, 3, 4, 12]
    [warning] = slow_warnings(caplog)
    assert "WebSocket slow-2 (/feed/slow-2) reads too slowly" in warning
    assert "dropping the newest messages from now on (policy 'drop_newest')" in warning
    outbox.close()


async def test_close_policy_closes_with_1013_and_drops_what_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    ws = FakeWS("slow-3")
    outbox, report = make(ws, maxsize=4, policy="close")
    await stalled_with_one_in_flight(ws, outbox)
    for i in range(1, 5):
        assert outbox.push(msg(i)) is True
    assert report.events == []
    assert outbox.push(msg(5)) is False  # full: the connection is closed
    # Dropped: the 4 waiting and the new one (0, in flight, is abandoned uncounted).
    assert report.counts == [("dropped", 5), ("closed_slow", 0)]
    assert outbox.dropped == 5
    assert outbox.closed is True
    assert len(outbox.queue) == 0
    assert await within(ws.closes.get()) == SLOW_CONSUMER_CLOSE
    assert SLOW_CONSUMER_CLOSE == (1013, "Slow consumer: too many messages waiting")
    # The send of message 0, waiting for room, was abandoned.
    assert outbox._pending is None
    ws.resume()
    await settle()
    assert ws.sent == []
    # Closed: later messages are refused, and nothing is reported or closed again.
    assert outbox.push(msg(6)) is False
    assert report.events == ["dropped", "closed_slow"]
    assert ws.closes.empty()
    [warning] = slow_warnings(caplog)
    assert "WebSocket slow-3 (/feed/slow-3) reads too slowly" in warning
    assert "closing it with 1013 (policy 'close')" in warning


async def test_close_policy_survives_a_close_that_fails(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    ws = FakeWS("slow-4")
    ws.close_error = ClientDisconnected()
    outbox, report = make(ws, maxsize=1, policy="close")
    await stalled_with_one_in_flight(ws, outbox)
    assert outbox.push(msg(1)) is True
    assert outbox.push(msg(2)) is False
    assert await within(ws.closes.get()) == SLOW_CONSUMER_CLOSE
    await settle()
    assert report.events == ["dropped", "closed_slow"]
    assert any(
        r.levelno == logging.DEBUG and "Could not close slow WebSocket slow-4" in r.getMessage()
        for r in caplog.records
    )


async def test_close_policy_counts_what_it_drops() -> None:
    """On the outbox and in the layer's stats alike: the waiting messages and the new one."""
    layer = ChannelLayer(MemoryBroker(f"outbox-{uuid.uuid4().hex}"))
    ws = FakeWS()
    try:
        outbox = await layer.register(ws, ["g"], outbox_size=4, slow_consumer="close")
        await stalled_with_one_in_flight(ws, outbox)
        for i in range(1, 6):
            await layer.publish("g", str(i))
        assert layer.stats.closed_slow == 1
        # Lost: 1..4 that waited, and 5 that overflowed. (0, in flight, was cancelled
        # with the writer: lost too, but not counted.)
        assert outbox.dropped == 5
        assert layer.stats.dropped == 5
        assert layer.stats.delivered == 4
    finally:
        await layer.stop()


# ---------------------------------------------------------------------------- held


@pytest.mark.parametrize("kind", [FakeWS, DirectWS])
async def test_a_held_outbox_sends_nothing_until_released(kind: type[FakeWS]) -> None:
    ws = kind()
    outbox, report = make(ws, maxsize=4, held=True)
    for i in range(3):
        assert outbox.push(msg(i)) is True
    await settle()
    assert ws.sent == []
    assert outbox._task is None  # no writer while held
    outbox.release()
    assert outbox.held is False
    assert await ws.sent_count(3) == [0, 1, 2]
    assert outbox.push(msg(3)) is True
    assert await ws.sent_count(4) == [0, 1, 2, 3]
    assert report.events == []
    outbox.close()


async def test_a_held_outbox_applies_its_policy_when_full() -> None:
    ws = FakeWS()
    outbox, report = make(ws, maxsize=3, policy="drop_oldest", held=True)
    for i in range(6):
        assert outbox.push(msg(i)) is True
    assert outbox.dropped == 3
    assert report.events == ["dropped"] * 3
    await settle()
    assert ws.sent == []
    outbox.release()
    assert await ws.sent_count(3) == [3, 4, 5]
    outbox.close()


async def test_releasing_an_empty_or_closed_outbox() -> None:
    ws = FakeWS()
    outbox, _ = make(ws, held=True)
    outbox.release()
    assert outbox._task is None  # nothing to send yet
    assert outbox.push(msg(0)) is True  # the first message starts the writer
    assert await ws.sent_count(1) == [0]
    outbox.close()

    other = FakeWS("ws-2")
    held, _ = make(other, held=True)
    assert held.push(msg(0)) is True
    held.close()
    held.release()
    await settle()
    assert held._task is None
    assert other.sent == []


# ---------------------------------------------------------------------------- gone


async def test_a_send_that_raises_reports_gone_and_closes_the_outbox() -> None:
    ws = FakeWS()
    ws.fail = ClientDisconnected()
    outbox, report = make(ws)
    assert outbox.push(msg(0)) is False  # the send failed at once: not delivered
    assert report.events == ["gone"]
    assert outbox.closed is True
    assert outbox.push(msg(1)) is False
    assert len(outbox.queue) == 0
    assert report.events == ["gone"]


async def test_the_peer_leaves_while_messages_wait() -> None:
    ws = FakeWS()
    outbox, report = make(ws, maxsize=8)
    await stalled_with_one_in_flight(ws, outbox)
    for i in range(1, 4):
        outbox.push(msg(i))
    ws.fail = RuntimeError("Unexpected ASGI message 'websocket.send'")  # any error: gone
    ws.resume()
    await idle(outbox)
    assert report.events == ["gone"]
    assert ws.sent == []
    assert len(outbox.queue) == 0  # what waited is released
    assert outbox.push(msg(4)) is False


async def test_a_connection_the_app_closed_is_reported_gone() -> None:
    """The writer checks the state before each send; the layer then marks it closed."""
    ws = FakeWS()

    def report(outbox: Outbox, event: str, count: int) -> None:
        events.append(event)
        outbox.closed = True  # as ChannelLayer._forget does

    events: list[str] = []
    outbox, _ = make(ws, report=report)
    assert outbox.push(msg(0)) is True
    assert await ws.sent_count(1) == [0]
    ws.application_state = WebSocketState.DISCONNECTED
    assert outbox.push(msg(1)) is True  # queued; the writer finds the connection closed
    await settle()
    assert events == ["gone"]
    assert texts(ws.sent) == [0]
    assert outbox.push(msg(2)) is False


async def test_a_connection_the_app_closed_refuses_later_messages() -> None:
    """Whatever the report callback does, the outbox closes itself: what waited is
    released and later pushes are refused (no writer would ever send them)."""
    ws = FakeWS()
    outbox, report = make(ws)
    ws.application_state = WebSocketState.DISCONNECTED
    assert outbox.push(msg(0)) is True
    assert outbox.push(msg(1)) is True
    writer = outbox._task
    assert writer is not None
    await within(asyncio.wait({writer}))
    assert report.counts == [("gone", 0)]
    assert outbox.closed is True
    assert len(outbox.queue) == 0
    assert outbox.push(msg(2)) is False
    assert ws.sent == []


# ---------------------------------------------------------------------------- close()


async def test_close_abandons_a_send_that_waits() -> None:
    ws = FakeWS()
    outbox, report = make(ws)
    await stalled_with_one_in_flight(ws, outbox)
    outbox.push(msg(1))
    outbox.close()
    assert outbox._pending is None
    assert outbox.closed is True
    assert len(outbox.queue) == 0
    ws.resume()
    await settle()
    assert ws.sent == []
    assert outbox.push(msg(2)) is False
    assert report.events == []  # closing is not a drop nor a loss of the peer
    outbox.close()  # twice: nothing happens


async def test_close_cancels_a_blocked_writer() -> None:
    ws = FakeWS()
    outbox, report = make(ws)
    await stalled_with_one_in_flight(ws, outbox)
    outbox.push(msg(1))
    ws.resume()  # 0 goes out from a writer task ...
    ws.stall()  # ... which then blocks on 1
    await within(ws.blocked.wait())
    writer = outbox._task
    assert writer is not None
    outbox.close()
    assert outbox._task is None
    await within(asyncio.wait({writer}))
    assert writer.cancelled()
    ws.resume()
    await settle()
    assert texts(ws.sent) == [0]
    assert outbox.push(msg(2)) is False
    assert report.events == []


async def test_a_resumed_send_is_cancelled_with_its_writer() -> None:
    """A send that waits twice: resumed by a writer task after the first wait, it gets
    the task's cancellation at the second."""
    first, second = asyncio.Event(), asyncio.Event()
    cancelled: list[Message] = []

    class TwoWaits(FakeWS):
        async def _send(self, message: Message) -> None:
            try:
                await first.wait()
                await second.wait()
            except asyncio.CancelledError:
                cancelled.append(message)
                raise
            self.sent.append(message)

    ws = TwoWaits()
    outbox, report = make(ws)
    assert outbox.push(msg(0)) is True  # waits at `first`
    first.set()
    await settle()  # resumed in a writer task, which now waits at `second`
    writer = outbox._task
    assert writer is not None
    assert not writer.done()
    outbox.close()
    await within(asyncio.wait({writer}))
    assert writer.cancelled()
    assert cancelled == [msg(0)]
    second.set()
    await settle()
    assert ws.sent == []
    assert report.events == []


async def test_close_of_an_idle_outbox() -> None:
    ws = FakeWS()
    outbox, _ = make(ws)
    assert outbox.push(msg(0)) is True
    assert texts(ws.sent) == [0]
    assert outbox._task is None  # idle: no task to cancel
    outbox.close()
    assert outbox.push(msg(1)) is False

    never_used, _ = make(FakeWS("ws-2"))
    never_used.close()  # nothing sent yet: nothing to cancel
    assert never_used.push(msg(0)) is False


async def test_the_writer_may_close_its_own_outbox_from_report() -> None:
    """A report callback runs in the writer task; close() must not cancel it there."""
    ws = FakeWS()
    events: list[str] = []

    def report(outbox: Outbox, event: str, count: int) -> None:
        events.append(event)
        outbox.close()

    outbox, _ = make(ws, report=report)
    await stalled_with_one_in_flight(ws, outbox)
    outbox.push(msg(1))
    ws.resume()
    await settle(1)  # the writer task starts, finishing 0 ...
    writer = outbox._task
    assert writer is not None
    ws.fail = ClientDisconnected()  # ... and fails on 1
    await within(asyncio.wait({writer}))
    assert not writer.cancelled()
    assert events == ["gone"]


# ---------------------------------------------------------------------------- the layer


@pytest.fixture
async def layer() -> Any:
    # A hub of its own: no other app or test can make the broker "shared".
    channels = ChannelLayer(MemoryBroker(f"outbox-{uuid.uuid4().hex}"), outbox_size=4)
    yield channels
    await channels.stop()


async def test_layer_fans_out_to_every_member_in_order(layer: ChannelLayer) -> None:
    members = [FakeWS(f"m{i}") for i in range(3)]
    for ws in members:
        await layer.register(ws, ["room"])
    assert layer.groups() == {"room": 3}
    for i in range(10):
        assert await layer.publish("room", str(i)) == 3
        await asyncio.sleep(0)  # the writers drain (outbox of 4)
    for ws in members:
        assert await ws.sent_count(10) == list(range(10))
    # One encoding: every member got the same message object.
    assert all(a is b for a, b in zip(members[0].sent, members[1].sent, strict=True))
    assert layer.stats.as_dict() == {
        "published": 10,
        "delivered": 30,
        "dropped": 0,
        "closed_slow": 0,
        "publish_failed": 0,
        "received_remote": 0,
        "published_remote": 0,
        "publish_refused": 0,
        "publish_unknown": 0,
        "missed_remote": 0,
        "history_failed": 0,
    }
    # exclude: everybody but one.
    assert await layer.publish("room", "x", exclude=members[0]) == 2


async def test_layer_register_uses_its_defaults_or_the_overrides(layer: ChannelLayer) -> None:
    default = await layer.register(FakeWS("a"))
    assert (default.maxsize, default.policy) == (4, "drop_oldest")
    custom = await layer.register(FakeWS("b"), outbox_size=2, slow_consumer="drop_newest")
    assert (custom.maxsize, custom.policy) == (2, "drop_newest")
    assert custom.member_id == "b"
    ws = FakeWS("c")
    assert await layer.register(ws) is await layer.register(ws, ["g"])  # one outbox
    assert layer.outbox_of(ws) is not None
    assert layer.groups_of(ws) == {"g"}


async def test_layer_join_needs_an_accepted_connection(layer: ChannelLayer) -> None:
    ws = FakeWS()
    ws.application_state = WebSocketState.CONNECTING
    with pytest.raises(WebSocketStateError, match="accept"):
        await layer.join(ws, "g")
    ws.application_state = WebSocketState.CONNECTED
    await layer.join(ws, "g")
    assert layer.members("g") == [ws]


async def test_layer_sends_to_every_member_at_once_past_a_full_one_and_a_gone_one(
    layer: ChannelLayer,
) -> None:
    """On a server without send_nowait, a broadcast awaits each member's send in one
    go; a member whose send must wait does not hold up those after it, and one whose
    send fails is dropped at once."""
    members = [FakeWS(f"m{i}") for i in range(5)]
    for ws in members:
        await layer.register(ws, ["room"])
    stalled, gone = members[1], members[3]
    stalled.stall()
    gone.fail = ClientDisconnected()
    assert await layer.publish("room", "0") == 4  # all but the gone one
    # Sent within publish, before any other task ran: all but the stalled and gone ones.
    assert [texts(ws.sent) for ws in members] == [[0], [], [0], [], [0]]
    assert layer.members("room") == [members[0], members[1], members[2], members[4]]
    assert await layer.publish("room", "1") == 4  # the stalled one's is queued
    assert [texts(ws.sent) for ws in members] == [[0, 1], [], [0, 1], [], [0, 1]]
    stalled.resume()
    assert await stalled.sent_count(2) == [0, 1]
    box = layer.outbox_of(stalled)
    assert box is not None
    await idle(box)
    assert await layer.publish("room", "2") == 4
    assert texts(stalled.sent) == [0, 1, 2]  # caught up: at once again
    assert layer.stats.delivered == 12
    assert layer.stats.dropped == 0


async def test_layer_a_slow_member_drops_only_its_own(layer: ChannelLayer) -> None:
    fast, slow = FakeWS("fast"), FakeWS("slow")
    await layer.register(fast, ["room"])
    slow_box = await layer.register(slow, ["room"], slow_consumer="drop_newest")
    slow.stall()
    for i in range(20):
        await layer.publish("room", str(i))
        await asyncio.sleep(0)
    assert await fast.sent_count(20) == list(range(20))
    # The slow one: 0 in flight, 1..4 waiting, 5..19 dropped.
    assert slow_box.dropped == 15
    assert layer.stats.dropped == 15
    assert layer.stats.delivered == 20 + 5
    fast_box = layer.outbox_of(fast)
    assert fast_box is not None
    assert fast_box.dropped == 0
    slow.resume()
    assert await slow.sent_count(5) == [0, 1, 2, 3, 4]


async def test_layer_stops_fanning_out_to_a_member_whose_writer_failed(
    layer: ChannelLayer,
) -> None:
    alive, dead = FakeWS("alive"), FakeWS("dead")
    await layer.register(alive, ["room", "other"])
    dead_box = await layer.register(dead, ["room", "other"])
    writer_started = await layer.publish("room", "0")
    assert writer_started == 2
    assert await dead.sent_count(1) == [0]
    dead.fail = ClientDisconnected()
    assert await layer.publish("room", "1") == 1  # the send to dead failed at once
    assert dead_box.closed is True
    # Forgotten at once, in every group, though the handler has not unregistered it yet.
    assert layer.members("room") == [alive]
    assert layer.members("other") == [alive]
    assert layer.groups() == {"room": 1, "other": 1}
    for i in range(2, 6):
        assert await layer.publish("room", str(i)) == 1
    assert await layer.send_to(["dead"], "direct") == 0
    assert await alive.sent_count(6) == list(range(6))
    assert texts(dead.sent) == [0]
    assert layer.stats.delivered == 2 + 1 + 4
    assert layer.stats.dropped == 0
    # The handler ends: unregister cleans the rest.
    await layer.unregister(dead)
    assert layer.outbox_of(dead) is None
    assert layer.groups_of(dead) == set()
    await layer.unregister(alive)
    assert layer.groups() == {}


async def test_layer_closes_a_slow_member_under_the_close_policy(layer: ChannelLayer) -> None:
    fast, slow = FakeWS("fast"), FakeWS("slow")
    await layer.register(fast, ["room"])
    slow_box = await layer.register(slow, ["room"], slow_consumer="close")
    slow.stall()
    for i in range(10):
        await layer.publish("room", str(i))
        await asyncio.sleep(0)
    assert await within(slow.closes.get()) == SLOW_CONSUMER_CLOSE
    assert slow.closes.empty()  # closed once
    assert layer.stats.closed_slow == 1
    assert slow_box.closed is True
    # The 4 waiting and the one that overflowed.
    assert slow_box.dropped == 5
    assert layer.stats.dropped == 5
    assert layer.members("room") == [fast]
    assert await fast.sent_count(10) == list(range(10))
    # 0 in flight, 1..4 queued, 5 overflowed: the close. 6..9 went to fast only.
    assert layer.stats.delivered == 10 + 5
    slow.resume()
    await settle()
    assert slow.sent == []
    await layer.unregister(slow)
    assert layer.groups() == {"room": 1}
