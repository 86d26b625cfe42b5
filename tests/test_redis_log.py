"""RedisBroker's group logs against a real Redis: append (log + announce), read, bounds,
epochs, and what a caller sees when Redis is unreachable or hung.

Each test has its own prefix, so tests sharing the server never see each other's logs;
two brokers stand for two processes. Waits are bounded by deadlines and poll a
condition; none sleeps for a fixed time to let something happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from _redis import PrivateRedis
from _servers import free_port
from nexios.channels.brokers.base import (
    Announcement,
    BrokerOutcomeUnknown,
    BrokerRefused,
    BrokerUnavailable,
    Logged,
    LogRead,
    parse_announcement,
)
from nexios.channels.brokers.redis import RedisBroker
from nexios.channels.log import Bounds, Position
from test_redis_broker import DEADLINE, Listener, wait_until

pytestmark = pytest.mark.redis

BrokerFactory = Callable[..., contextlib.AbstractAsyncContextManager[RedisBroker]]

UNBOUNDED_AGE = Bounds(max_count=1000, max_bytes=None, max_age=None)


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client on the shared server, to look at and delete keys."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def make_broker(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> AsyncIterator[BrokerFactory]:
    """``async with make_broker(**options) as broker``: started, then stopped. On
    teardown, every key under the test's prefix is deleted from the shared Redis."""

    @contextlib.asynccontextmanager
    async def make(*, url: str = redis_url, **options: Any) -> AsyncIterator[RedisBroker]:
        options.setdefault("prefix", prefix)
        broker = RedisBroker(url, **options)
        await broker.start()
        try:
            yield broker
        finally:
            await broker.stop()

    yield make
    keys = [key async for key in raw.scan_iter(match=f"{prefix}:*")]
    if keys:
        await raw.delete(*keys)


async def delete_log(raw: aioredis.Redis, prefix: str, channel: str) -> None:
    """What FLUSHDB or a Redis restarted empty does to one log (other tests share the
    server, so only this log's keys)."""
    assert await raw.delete(f"{prefix}:log:{{{channel}}}", f"{prefix}:stream:{{{channel}}}") == 2


async def poll_read(
    broker: RedisBroker, channel: str, after: int, condition: Callable[[LogRead], bool]
) -> LogRead:
    """`read` until *condition* holds, for at most DEADLINE seconds."""
    deadline = time.perf_counter() + DEADLINE
    while not condition(found := await broker.read(channel, after)):
        if time.perf_counter() > deadline:
            pytest.fail(f"read({channel!r}, {after}) still {found} after {DEADLINE} s")
        await asyncio.sleep(0.01)
    return found


# Appending, announcing, reading.


async def test_offsets_count_from_one_and_announcements_match_the_log(
    make_broker: BrokerFactory,
) -> None:
    async with make_broker() as writer, make_broker() as reader, Listener(reader) as inbox:
        await reader.subscribe("room")
        sent = [
            ("json", b'{"n": 1}', "a-1"),
            ("text", "héllo".encode(), "a-2"),
            ("bytes", b"\x00\xff\n\n not utf-8 \x80", "a-3"),
            ("bytes", b"", "a-4"),
        ]
        positions = [
            await writer.append("room", kind, body, msg_id, Bounds())  # type: ignore[arg-type]
            for kind, body, msg_id in sent
        ]
        epoch = positions[0].epoch
        assert positions == [Position(epoch, offset) for offset in (1, 2, 3, 4)]

        for position, (kind, body, msg_id) in zip(positions, sent, strict=True):
            channel, data = await inbox.next()
            assert channel == "room"
            assert parse_announcement(data) == Announcement(position, kind, msg_id, body)  # type: ignore[arg-type]

        found = await reader.read("room", after=0)
        assert found == LogRead(
            epoch,
            top=4,
            first=1,
            entries=[
                Logged(p.offset, kind, body, msg_id)  # type: ignore[arg-type]
                for p, (kind, body, msg_id) in zip(positions, sent, strict=True)
            ],
        )


async def test_keys_are_under_the_prefix_in_one_cluster_slot(
    make_broker: BrokerFactory, raw: aioredis.Redis, prefix: str
) -> None:
    async with make_broker() as broker:
        await broker.append("room:1", "text", b"x", "m", Bounds())
    keys = sorted([key.decode() async for key in raw.scan_iter(match=f"{prefix}:*")])
    assert keys == [
        f"{prefix}:log:{{room:1}}",
        f"{prefix}:sizes:{{room:1}}",
        f"{prefix}:stream:{{room:1}}",
    ]
    assert len({key_slot(key.encode()) for key in keys}) == 1


async def test_two_processes_appending_at_once_get_every_offset_once_in_order(
    make_broker: BrokerFactory,
) -> None:
    async with (
        make_broker() as one,
        make_broker() as two,
        make_broker() as watcher,
        Listener(watcher) as inbox,
    ):
        await watcher.subscribe("room")

        async def append_all(broker: RedisBroker, name: str) -> list[Position]:
            return await asyncio.gather(
                *(
                    broker.append("room", "text", b"%d" % i, f"{name}-{i}", Bounds())
                    for i in range(500)
                )
            )

        first, second = await asyncio.gather(append_all(one, "one"), append_all(two, "two"))
        offsets = [p.offset for p in first + second]
        assert sorted(offsets) == list(range(1, 1001))  # none twice, none skipped
        assert len({p.epoch for p in first + second}) == 1

        announced = [parse_announcement((await inbox.next())[1]) for _ in range(1000)]
        # Every subscriber sees the log's order: strictly increasing, no gap.
        assert [a.position.offset for a in announced] == list(range(1, 1001))
        by_id = {f"one-{i}": p for i, p in enumerate(first)}
        by_id.update({f"two-{i}": p for i, p in enumerate(second)})
        assert all(by_id[a.id] == a.position for a in announced)

        found = await watcher.read("room", after=0)
        assert [(e.offset, e.id) for e in found.entries] == [
            (a.position.offset, a.id) for a in announced
        ]


async def test_a_one_mib_body_round_trips(make_broker: BrokerFactory) -> None:
    body = os.urandom(1024 * 1024)
    async with make_broker() as writer, make_broker() as reader, Listener(reader) as inbox:
        await reader.subscribe("room")
        position = await writer.append("room", "bytes", body, "big", Bounds())
        announced = parse_announcement((await inbox.next())[1])
        assert announced == Announcement(position, "bytes", "big", body)
        found = await reader.read("room", after=0)
        assert found.entries == [Logged(1, "bytes", body, "big")]


# Bounds.


async def test_max_count_keeps_the_last_n(make_broker: BrokerFactory) -> None:
    bounds = Bounds(max_count=3, max_bytes=None, max_age=None)
    async with make_broker() as broker:
        for i in range(10):
            await broker.append("room", "text", b"m%d" % i, f"m{i}", bounds)
        found = await broker.read("room", after=7)
        assert (found.top, found.first) == (10, 8)  # first == top - N + 1
        assert [(e.offset, e.body) for e in found.entries] == [(8, b"m7"), (9, b"m8"), (10, b"m9")]


async def test_max_bytes_keeps_within_but_never_drops_the_newest(
    make_broker: BrokerFactory,
) -> None:
    bounds = Bounds(max_count=None, max_bytes=10, max_age=None)
    async with make_broker() as broker:

        async def held() -> list[tuple[int, bytes]]:
            found = await broker.read("room", after=(await broker.read("room", 0)).first - 1)
            return [(e.offset, e.body) for e in found.entries]

        for i in range(5):
            await broker.append("room", "bytes", b"%04d" % i, f"m{i}", bounds)
        assert await held() == [(4, b"0003"), (5, b"0004")]  # 8 bytes; three would be 12

        big = b"x" * 25
        await broker.append("room", "bytes", big, "big", bounds)
        assert await held() == [(6, big)]  # alone over the bound, and kept

        await broker.append("room", "bytes", b"y", "small", bounds)
        assert await held() == [(7, b"y")]

        for i in range(4):
            await broker.append("room", "bytes", b"zzz", f"z{i}", bounds)
        # y and three zzz make 10 bytes; the fourth zzz pushes out y and the first zzz.
        assert await held() == [(9, b"zzz"), (10, b"zzz"), (11, b"zzz")]


async def test_max_age_drops_old_entries_and_never_returns_them(
    make_broker: BrokerFactory, raw: aioredis.Redis, prefix: str
) -> None:
    bounds = Bounds(max_count=100, max_bytes=None, max_age=0.2)
    async with make_broker() as writer, make_broker() as reader:
        appended = time.perf_counter()
        await writer.append("room", "text", b"old 1", "o1", bounds)
        await writer.append("room", "text", b"old 2", "o2", bounds)
        assert [e.body for e in (await reader.read("room", 0)).entries] == [b"old 1", b"old 2"]

        # Nothing appended since: read itself drops what expired.
        found = await poll_read(reader, "room", 2, lambda r: r.first == 3)
        assert time.perf_counter() - appended >= 0.15  # Redis's ms clock, ours in s
        assert (found.top, found.entries) == (2, [])
        gone = await reader.read("room", after=0)
        assert (gone.first, gone.entries) == (3, [])  # 0 < first - 1: the caller sees why

        position = await writer.append("room", "text", b"new", "n", bounds)
        assert position == Position(found.epoch, 3)  # same log, same epoch
        assert (await reader.read("room", 2)).entries == [Logged(3, "text", b"new", "n")]

        # Both keys expire together, at least an hour after the last append.
        for key in (f"{prefix}:log:{{room}}", f"{prefix}:stream:{{room}}"):
            assert 3_500_000 < await raw.pttl(key) <= 3_600_000
        await writer.append("room", "text", b"kept", "k", UNBOUNDED_AGE)
        for key in (f"{prefix}:log:{{room}}", f"{prefix}:stream:{{room}}"):
            assert await raw.pttl(key) == -1  # max_age None: no expiry


async def test_max_age_applies_to_the_oldest_on_append(make_broker: BrokerFactory) -> None:
    bounds = Bounds(max_count=100, max_bytes=None, max_age=0.2)
    async with make_broker() as broker:
        await broker.append("room", "text", b"old", "o", bounds)
        # Wait (bounded) until the entry has expired, then append without reading.
        await poll_read(broker, "room", 0, lambda r: r.first == 2)
        await broker.append("room", "text", b"new", "n", bounds)
        found = await broker.read("room", 0)
        assert (found.first, found.top) == (2, 2)


# Epochs.


async def test_one_epoch_across_appends_and_processes(make_broker: BrokerFactory) -> None:
    async with make_broker() as one, make_broker() as two:
        positions = [
            await broker.append("room", "text", b"x", f"m{i}", Bounds())
            for i, broker in enumerate([one, two, one, two])
        ]
        assert [p.offset for p in positions] == [1, 2, 3, 4]
        assert len({p.epoch for p in positions}) == 1
        assert (await two.read("room", 4)).epoch == positions[0].epoch


async def test_a_lost_log_starts_again_at_one_in_a_new_epoch(
    make_broker: BrokerFactory, raw: aioredis.Redis, prefix: str
) -> None:
    async with make_broker() as one, make_broker() as two:
        before = [await one.append("room", "text", b"x", f"m{i}", Bounds()) for i in range(3)]
        await delete_log(raw, prefix, "room")  # FLUSHDB, or a restart without persistence
        after = await two.append("room", "text", b"y", "n", Bounds())
        assert after.offset == 1
        assert after.epoch != before[0].epoch
        found = await one.read("room", 0)
        assert found == LogRead(after.epoch, 1, 1, [Logged(1, "text", b"y", "n")])

        # Entries lost while the meta survived (the stream evicted or deleted alone):
        # the past is gone, so the epoch changes too.
        assert await raw.delete(f"{prefix}:stream:{{room}}") == 1
        again = await one.read("room", 0)
        assert (again.top, again.first, again.entries) == (0, 1, [])
        assert again.epoch not in (before[0].epoch, after.epoch)


async def test_reading_a_log_never_written_creates_it_empty(
    make_broker: BrokerFactory, raw: aioredis.Redis, prefix: str
) -> None:
    async with make_broker() as reader, make_broker() as writer:
        first = await reader.read("quiet", 0)
        assert (first.top, first.first, first.entries) == (0, 1, [])
        second = await writer.read("quiet", 0)
        assert second == first  # the same epoch: a reader can come back with 0:<epoch>
        # Appending continues that epoch: a reader at 0 recovers offset 1.
        assert await writer.append("quiet", "text", b"hi", "m", Bounds()) == Position(
            first.epoch, 1
        )
        assert (await reader.read("quiet", 0)).entries == [Logged(1, "text", b"hi", "m")]
    # An empty log that nothing appends to does not stay forever.
    async with make_broker() as reader:
        await reader.read("never", 0)
        assert 0 < await raw.pttl(f"{prefix}:log:{{never}}") <= 3_600_000


# Reading.


async def test_read_edges(make_broker: BrokerFactory) -> None:
    bounds = Bounds(max_count=3, max_bytes=None, max_age=None)
    async with make_broker() as broker:
        for i in range(1, 6):
            await broker.append("room", "text", b"m%d" % i, f"m{i}", bounds)
        # The log holds 3, 4, 5.

        async def offsets(after: int, limit: int | None = None) -> tuple[int, int, list[int]]:
            found = await broker.read("room", after, limit)
            return found.top, found.first, [e.offset for e in found.entries]

        assert await offsets(2) == (5, 3, [3, 4, 5])  # from just before first
        assert await offsets(4) == (5, 3, [5])
        assert await offsets(5) == (5, 3, [])  # at the top: nothing missed
        assert await offsets(6) == (5, 3, [])  # beyond the top
        assert await offsets(1) == (5, 3, [])  # 2 was trimmed: first says so
        assert await offsets(0) == (5, 3, [])
        assert await offsets(2, limit=2) == (5, 3, [3, 4])
        assert await offsets(3, limit=1) == (5, 3, [4])
        assert await offsets(2, limit=0) == (5, 3, [])


async def test_announcement_ids_with_a_newline_are_refused(make_broker: BrokerFactory) -> None:
    async with make_broker() as broker:
        with pytest.raises(ValueError, match="newline"):
            await broker.append("room", "text", b"x", "bad\nid", Bounds())
        assert (await broker.read("room", 0)).top == 0


# Redis unreachable or hung.


async def test_unreachable_redis_fails_fast(make_broker: BrokerFactory) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    broker = RedisBroker(url, prefix="unreachable")
    started = time.perf_counter()
    with pytest.raises(BrokerUnavailable) as failed:
        await broker.append("room", "text", b"x", "m", Bounds())
    assert not isinstance(failed.value, BrokerOutcomeUnknown)  # never sent
    with pytest.raises(BrokerRefused):  # known down now: not even tried
        await broker.append("room", "text", b"x", "m", Bounds())
    with pytest.raises(BrokerRefused):
        await broker.read("room", 0)
    assert time.perf_counter() - started < 0.5
    await broker.stop()

    async with make_broker(url=url) as started_down:  # start found it down
        with pytest.raises(BrokerUnavailable):
            await started_down.read("room", 0)
    with pytest.raises(BrokerUnavailable, match="stopped"):
        await started_down.append("room", "text", b"x", "m", Bounds())


async def test_a_hung_redis_gives_an_unknown_outcome_and_may_still_append(
    make_broker: BrokerFactory, private_redis: PrivateRedis
) -> None:
    url = private_redis.url
    async with (
        make_broker(url=url, timeout=0.3) as writer,
        make_broker(url=url) as reader,
        Listener(reader) as inbox,
    ):
        await reader.subscribe("room")
        before = await writer.append("room", "text", b"before", "b", Bounds())
        assert parse_announcement((await inbox.next())[1]).id == "b"

        private_redis.signal(signal.SIGSTOP)  # connections stay open, nothing answers
        try:
            started = time.perf_counter()
            with pytest.raises(BrokerOutcomeUnknown, match="did not answer"):
                await writer.append("room", "text", b"unknown", "u", Bounds())
            assert 0.25 < time.perf_counter() - started < 0.8  # about one timeout
            started = time.perf_counter()
            with pytest.raises(BrokerRefused):  # known down: refused at once, not sent
                await writer.append("room", "text", b"refused", "r", Bounds())
            assert time.perf_counter() - started < 0.05
        finally:
            private_redis.signal(signal.SIGCONT)

        # The unknown outcome: the script was sent before Redis stopped, and a stopped
        # Redis runs it when it resumes. It is in the log, and announced; the refused
        # one is not.
        await wait_until(lambda: writer.healthy, "the writer healthy again")
        found = await reader.read("room", 0)
        assert [(e.offset, e.id) for e in found.entries] == [(1, "b"), (2, "u")]
        assert parse_announcement((await inbox.next())[1]).position == Position(before.epoch, 2)
        after = await writer.append("room", "text", b"after", "a", Bounds())
        assert after == Position(before.epoch, 3)


async def test_a_redis_without_the_scripts_cached_still_runs_them(
    make_broker: BrokerFactory, private_redis: PrivateRedis
) -> None:
    async with make_broker(url=private_redis.url) as broker:
        assert (await broker.append("room", "text", b"1", "a", Bounds())).offset == 1
        raw = aioredis.Redis.from_url(private_redis.url)
        try:
            await raw.script_flush()  # as after a restart: EVALSHA gets NOSCRIPT
        finally:
            await raw.aclose()
        assert (await broker.append("room", "text", b"2", "b", Bounds())).offset == 2
        assert [e.body for e in (await broker.read("room", 0)).entries] == [b"1", b"2"]
