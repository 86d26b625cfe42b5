"""Delivery through the group logs, in process (memory broker), with fake connections.

What a user notices: a member that reads gets every message, in order, however fast a
handler publishes; a member that stops reading is dealt with within the pacing bound
and costs the others nothing; a member that rejoins with its last position gets exactly
what it missed. `FakeSink` (tests/_sinks.py) plays the socket and the client.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from typing import Any

import pytest

from _sinks import FakeSink
from nexios.channels import Bounds, ChannelLayer, Joined, MemoryBroker, Position, Published
from nexios.channels.writers import SLOW_CONSUMER_CLOSE


def layer(**options: Any) -> ChannelLayer:
    return ChannelLayer(MemoryBroker(f"delivery-{uuid.uuid4().hex}"), **options)


async def reader(sink: FakeSink, per_turn: int) -> None:
    """A client reading as fast as it can: ``per_turn`` messages each loop turn."""
    sink.stall()
    while not sink.gone:
        sink.read(per_turn)
        await asyncio.sleep(0)


async def test_publish_returns_the_count_and_a_position_that_grows_by_one() -> None:
    channels = layer()
    a, b = FakeSink("a"), FakeSink("b")
    try:
        await channels.join(a, "room")
        await channels.join(b, "room")
        first = await channels.publish("room", {"n": 1})
        second = await channels.publish("room", "two")
        assert isinstance(first, Published)
        assert isinstance(first, int)
        assert first == 2
        assert first.delivered == 2
        assert first.position is not None
        assert second.position is not None
        assert first.position.offset == 1
        assert second.position.offset == 2
        assert first.position.epoch == second.position.epoch
        assert a.payloads() == b.payloads() == [{"n": 1}, "two"]
        # Nobody here: still logged, still a position.
        empty = await channels.publish("nobody", 1)
        assert empty == 0
        assert empty.position is not None
        assert empty.position.offset == 1
    finally:
        await channels.stop()


@pytest.mark.parametrize("size", [8 * 1024, 64 * 1024])
async def test_a_flood_reaches_a_member_that_reads_every_message_in_order(size: int) -> None:
    """3,000 publishes in a loop to one member whose socket holds 4 messages and who
    reads 3 per loop turn: slower than the publisher, never lost."""
    channels = layer()
    sink = FakeSink("reader", room=4)
    task = asyncio.create_task(reader(sink, 3))
    try:
        await channels.join(sink, "room")
        for i in range(3000):
            await channels.publish("room", {"n": i, "pad": "x" * size})
        await sink.wait_for(3000)
        assert [p["n"] for p in sink.payloads()] == list(range(3000))
        assert channels.stats.skipped == channels.stats.closed_slow == 0
        assert channels.stats.paced > 0  # the publisher was held back, not the member dropped
        # Memory: the log holds at most its bounds, whatever was published.
        log = channels.broker.local_log("g:room")
        assert log is not None
        assert log.nbytes <= Bounds().max_bytes
    finally:
        sink.disconnect()
        await task
        await channels.stop()


async def test_stalled_members_are_closed_within_the_bound_and_slow_nobody_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Five members stop reading together: the publisher waits for them once, about
    pace_timeout for all of them (not five times that), then they fall off the log and
    are closed with 1013; the readers get everything."""
    caplog.set_level(logging.INFO, logger="nexios.channels")
    channels = layer(pace_timeout=0.3, log=Bounds(max_count=200))
    readers = [FakeSink(f"r{i}", room=8) for i in range(20)]
    stalled = [FakeSink(f"stalled{i}", room=8) for i in range(5)]
    tasks = [asyncio.create_task(reader(s, 4)) for s in readers]
    for sink in stalled:
        sink.stall()
    try:
        for sink in [*readers, *stalled]:
            await channels.join(sink, "room")
        waits = []
        for i in range(2000):
            before = time.monotonic()
            await channels.publish("room", i)
            waits.append(time.monotonic() - before)
        for sink in readers:
            await sink.wait_for(2000)
            assert sink.payloads() == list(range(2000))
        long_waits = [w for w in waits if w > 0.15]
        assert len(long_waits) == 1, sorted(waits)[-6:]
        assert long_waits[0] < 0.3 + 0.5
        for sink in stalled:
            assert sink.closed == SLOW_CONSUMER_CLOSE
            assert sink.payloads() == list(range(len(sink.payloads())))  # in order, a prefix
        assert SLOW_CONSUMER_CLOSE[0] == 1013
        assert channels.stats.slow == 5
        assert channels.stats.closed_slow == 5
        assert channels.members("room") == readers  # gone from the group
        assert sum("fell behind the log" in r.message for r in caplog.records) == 5
    finally:
        for sink in readers:
            sink.disconnect()
        await asyncio.gather(*tasks)
        await channels.stop()


async def test_skip_moves_a_stalled_member_to_the_newest_and_tells_it_what_it_missed() -> None:
    channels = layer(slow_consumer="skip", pace_timeout=0.05, log=Bounds(max_count=50))
    sink = FakeSink("ticker", room=5)
    sink.stall()
    try:
        await channels.join(sink, "prices", envelope=True)
        for i in range(300):
            await channels.publish("prices", {"price": i})
        sink.resume()
        last = await channels.publish("prices", {"price": 300})
        assert last.position is not None
        await sink.wait_until(lambda: sink.payloads()[-1].get("data") == {"price": 300})
        got = sink.payloads()
        notices = [m for m in got if "missed" in m]
        assert notices, got
        data = [m["data"]["price"] for m in got if "data" in m]
        assert data == sorted(data)
        assert data[-1] == 300
        # Everything is accounted for: each price arrived or was counted missed.
        assert len(data) + sum(n["missed"] for n in notices) == 301
        assert channels.member_of(sink).missed == channels.stats.skipped > 0  # type: ignore[union-attr]
        assert sink.closed is None  # skip never closes
    finally:
        await channels.stop()


async def test_envelopes_say_where_each_message_sits() -> None:
    channels = layer()
    sink = FakeSink("c")
    try:
        await channels.join(sink, "room", envelope=True)
        sent = [
            await channels.publish("room", {"a": 1}),
            await channels.publish("room", "hi"),
            await channels.publish("room", b"\x00\xff"),
        ]
        got = sink.payloads()
        epoch = sent[0].position.epoch  # type: ignore[union-attr]
        assert got[0] == {"group": "room", "epoch": epoch, "offset": 1, "data": {"a": 1}}
        assert got[1] == {"group": "room", "epoch": epoch, "offset": 2, "data": "hi"}
        assert got[2]["offset"] == 3
        assert got[2]["encoding"] == "base64"
        assert base64.b64decode(got[2]["data"]) == b"\x00\xff"
        # The short form of a position is what a client sends back.
        assert str(sent[2].position) == f"3:{epoch}"
    finally:
        await channels.stop()


async def test_rejoining_with_a_position_gets_exactly_the_missed_messages_then_live() -> None:
    channels = layer()
    first = FakeSink("before")
    try:
        await channels.join(first, "room", envelope=True)
        for i in range(5):
            await channels.publish("room", i)
        seen = first.payloads()[2]  # the client saw offsets 1..3, then was cut off
        await channels.unregister(first)
        for i in range(5, 8):
            await channels.publish("room", i)
        again = FakeSink("after")
        position = {"epoch": seen["epoch"], "offset": seen["offset"]}
        for since in (position, f"{seen['offset']}:{seen['epoch']}", Position(**position)):
            again = FakeSink("after")
            joined = await channels.join(again, "room", since=since, envelope=True)
            assert isinstance(joined, Joined)
            assert joined.recovered
            assert joined.reason is None
            assert joined.replayed == 5
            await again.wait_for(5)
            await channels.unregister(again)
            assert [m["data"] for m in again.payloads()] == [3, 4, 5, 6, 7]
        again = FakeSink("live")
        await channels.join(again, "room", since=position, envelope=True)
        await channels.publish("room", 8)
        await again.wait_for(6)
        assert [m["offset"] for m in again.payloads()] == [4, 5, 6, 7, 8, 9]
    finally:
        await channels.stop()


async def test_a_position_the_log_cannot_cover_is_not_recovered_and_says_why() -> None:
    channels = layer(log=Bounds(max_count=3))
    try:
        for i in range(10):
            last = await channels.publish("room", i)
        epoch = last.position.epoch  # type: ignore[union-attr]
        cases = {
            "trimmed": f"2:{epoch}",  # offsets 3..7 are gone
            "epoch": "5:someotherepoch",
            "future": f"99:{epoch}",
        }
        for top, (reason, since) in enumerate(cases.items(), start=10):
            sink = FakeSink(reason)
            joined = await channels.join(sink, "room", since=since)
            assert not joined.recovered
            assert joined.reason == reason
            assert joined.position == Position(epoch, top)  # where it goes on from
            await channels.publish("room", reason)
            await sink.wait_for(1)
            assert sink.payloads() == [reason]  # live from now, nothing replayed
            await channels.unregister(sink)
        assert channels.stats.recovery_failed == 3
        with pytest.raises(ValueError, match="<offset>:<epoch>"):
            await channels.join(FakeSink("bad"), "room", since="not a position")
    finally:
        await channels.stop()


async def test_rejoining_while_a_publisher_floods_has_no_gap_and_no_duplicate() -> None:
    channels = layer()
    first = FakeSink("first")
    stop = asyncio.Event()

    async def flood() -> None:
        i = 0
        while not stop.is_set():
            await channels.publish("room", i)
            i += 1
            await asyncio.sleep(0)

    try:
        await channels.join(first, "room", envelope=True)
        task = asyncio.create_task(flood())
        await first.wait_for(50)
        await channels.unregister(first)
        last = first.payloads()[-1]
        await asyncio.sleep(0)
        again = FakeSink("again")
        await channels.join(again, "room", since=f"{last['offset']}:{last['epoch']}", envelope=True)
        await again.wait_for(200)
        stop.set()
        await task
        offsets = [m["offset"] for m in first.payloads() + again.payloads()]
        assert offsets == list(range(1, len(offsets) + 1))
    finally:
        await channels.stop()


async def test_a_member_without_send_nowait_gets_everything_in_order() -> None:
    """On a server without nexios' send_nowait every write goes through the writer."""
    channels = layer()
    sink = FakeSink("plain", room=2, nowait=False)
    task = asyncio.create_task(reader(sink, 1))
    try:
        await channels.join(sink, "room")
        for i in range(500):
            await channels.publish("room", i)
        await channels.send_to(["plain"], "direct")
        await sink.wait_for(501)
        assert sink.payloads() == [*range(500), "direct"]  # the direct one after the rest
    finally:
        sink.disconnect()
        await task
        await channels.stop()


async def test_a_held_member_gets_nothing_before_it_is_released() -> None:
    channels = layer()
    sink = FakeSink("accepting")
    try:
        member = await channels.register(sink, ["room"], held=True)
        for i in range(3):
            await channels.publish("room", i)
        await channels.send_to(["accepting"], "by id")
        assert sink.payloads() == []
        member.release()
        await sink.wait_for(4)
        assert sink.payloads() == [0, 1, 2, "by id"]
    finally:
        await channels.stop()


async def test_exclude_skips_only_that_member() -> None:
    channels = layer()
    a, b = FakeSink("a"), FakeSink("b")
    try:
        await channels.join(a, "room")
        await channels.join(b, "room")
        sent = await channels.publish("room", "from a", exclude=a)
        await channels.publish("room", "to all")
        assert sent == 1
        assert a.payloads() == ["to all"]
        assert b.payloads() == ["from a", "to all"]
    finally:
        await channels.stop()


async def test_a_member_that_disconnects_mid_stream_leaves_nothing_behind() -> None:
    channels = layer()
    gone = FakeSink("gone", room=2)
    gone.stall()
    try:
        await channels.join(gone, "room")
        for i in range(10):
            await channels.publish("room", i)
        gone.disconnect()
        await channels.publish("room", "after")
        await channels.unregister(gone)
        assert channels.groups() == {}
        assert channels._registry.members == {}
        assert channels._registry.by_id == {}
    finally:
        await channels.stop()


async def test_log_bounds_are_per_group_and_validated() -> None:
    channels = layer(log=Bounds(max_count=10))
    try:
        assert channels.configure("big", max_count=100).max_count == 100
        for i in range(50):
            await channels.publish("big", i)
            await channels.publish("small", i)
        assert len(await channels.history("big", 1000)) == 50
        assert len(await channels.history("small", 1000)) == 10
        with pytest.raises(ValueError, match="max_count"):
            channels.configure("bad", max_count=0)
        with pytest.raises(ValueError, match="'close' or 'skip'"):
            layer(slow_consumer="sometimes")  # type: ignore[arg-type]
    finally:
        await channels.stop()


async def test_exclude_holds_for_a_member_that_is_behind() -> None:
    """The excluded member is behind when the message is published: its writer, which
    catches it up from the log, leaves that message out."""
    channels = layer()
    a, b = FakeSink("a", room=1), FakeSink("b")
    a.stall()
    try:
        await channels.join(a, "room")
        await channels.join(b, "room")
        await channels.publish("room", "one")
        await channels.publish("room", "two")  # a's socket is full: a is behind
        await channels.publish("room", "from a", exclude=a)
        await channels.publish("room", "three")
        a.resume()
        await a.wait_for(3)
        await b.wait_for(4)
        assert a.payloads() == ["one", "two", "three"]
        assert b.payloads() == ["one", "two", "from a", "three"]
    finally:
        await channels.stop()


async def test_skip_notices_come_in_the_streams_order_when_a_member_skips_twice() -> None:
    """A member that falls off the log again before it read the first notice gets one
    notice for both stretches: the offsets it sees never go back."""
    channels = layer(slow_consumer="skip", pace_timeout=0.05, log=Bounds(max_count=50))
    sink = FakeSink("ticker", room=5)
    sink.stall()
    try:
        await channels.join(sink, "prices", envelope=True)
        for i in range(300):  # falls off the 50-entry log several times
            await channels.publish("prices", i)
        sink.resume()
        await sink.wait_until(lambda: sink.payloads()[-1].get("offset") == 300)
        last = 0  # the last offset the client has accounted for
        for message in sink.payloads():
            if "missed" in message:
                assert message["offset"] - message["missed"] == last, (message, last)
            else:
                assert message["offset"] == last + 1, (message, last)
            last = message["offset"]
        assert last == 300
    finally:
        await channels.stop()


async def test_a_member_that_reads_slower_than_the_publisher_is_never_taken_for_slow() -> None:
    """A publisher flooding for many times pace_timeout, a member reading 2 messages a
    loop turn: each time it is the high-water mark behind, the publisher waits until it
    is back to half; it is never marked slow, and gets every message. (pace_timeout is
    far shorter than the flood, yet long enough that a loaded machine stalling the whole
    process for a moment does not make the reader look slow.)"""
    channels = layer(pace_timeout=0.5)
    sink = FakeSink("reader", room=4)
    task = asyncio.create_task(reader(sink, 2))
    try:
        await channels.join(sink, "room")
        for i in range(20_000):
            await channels.publish("room", i)
        await sink.wait_for(20_000)
        assert sink.payloads() == list(range(20_000))
        assert channels.stats.slow == channels.stats.closed_slow == 0
        assert channels.stats.paced > 0
    finally:
        sink.disconnect()
        await task
        await channels.stop()


async def test_a_full_queue_of_messages_by_id_never_drops_a_skip_notice() -> None:
    channels = layer(
        slow_consumer="skip", pace_timeout=0.01, log=Bounds(max_count=10), outbox_size=3
    )
    sink = FakeSink("feed", room=1)
    sink.stall()
    try:
        await channels.join(sink, "prices", envelope=True)
        for i in range(40):  # falls off the log: a skip notice waits in its queue
            await channels.publish("prices", i)
        for i in range(5):  # a full queue of messages by id drops the oldest ones
            await channels.send_to(["feed"], f"direct {i}")
        sink.resume()
        await channels.publish("prices", "last")
        await sink.wait_until(
            lambda: (
                "direct 4" in sink.payloads()
                and any(isinstance(m, dict) and m.get("data") == "last" for m in sink.payloads())
            )
        )
        got = sink.payloads()
        assert any(isinstance(m, dict) and "missed" in m for m in got), got
        # The queue holds 3: the notice and two messages by id; three were dropped.
        assert [m for m in got if isinstance(m, str)] == ["direct 3", "direct 4"]
        assert channels.member_of(sink).dropped == 3  # type: ignore[union-attr]
    finally:
        await channels.stop()
