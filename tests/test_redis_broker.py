"""RedisBroker against a real Redis: pub/sub between processes, history, reconnection.

Each test namespaces its channels and keys with its own prefix, so tests running at the
same time on the shared server never see each other. Two brokers stand for two
processes. Waits are bounded: a test polls with short awaits up to a deadline, and
proves that a message did *not* arrive by the order of a later marker message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from _redis import PrivateRedis
from _servers import free_port
from nexios.channels.brokers.base import BrokerUnavailable
from nexios.channels.brokers.redis import RedisBroker

pytestmark = pytest.mark.redis

DEADLINE = 5.0  # seconds: the longest any wait below may take before the test fails


class Listener:
    """Iterates ``broker.listen()`` in a task, as the channel layer does.

    ``async with Listener(broker) as inbox``: on exit, stops the broker and checks that
    ``listen`` ended without an error.
    """

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self.received: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Listener:
        self.task = asyncio.create_task(self._run())
        await asyncio.sleep(0)  # the task's first step: listen() is running from here
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.task is not None
        await self.broker.stop()
        async with asyncio.timeout(DEADLINE):
            await self.task

    async def _run(self) -> None:
        async for item in self.broker.listen():
            self.received.put_nowait(item)

    async def next(self) -> tuple[str, bytes]:
        async with asyncio.timeout(DEADLINE):
            return await self.received.get()


BrokerFactory = Callable[..., contextlib.AbstractAsyncContextManager[RedisBroker]]


async def wait_until(condition: Callable[[], bool], what: str) -> float:
    """Poll *condition* every millisecond; return how long it took to hold."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not condition():
        if loop.time() - start > DEADLINE:
            pytest.fail(f"Not {what} after {DEADLINE} s")
        await asyncio.sleep(0.001)
    return loop.time() - start


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
async def make_broker(redis_url: str, prefix: str) -> AsyncIterator[BrokerFactory]:
    """``async with make_broker(url=..., **options) as broker``: started, then stopped.

    On teardown, the history under the test's prefix is deleted from the shared Redis.
    """

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
    async with make() as cleaner:
        await cleaner.clear_history()


# Pub/sub.


async def test_publish_reaches_a_subscriber_in_another_process(
    make_broker: BrokerFactory,
) -> None:
    async with (
        make_broker() as publisher,
        make_broker() as subscriber,
        Listener(subscriber) as inbox,
    ):
        await subscriber.subscribe("room")
        payloads = [b"hello", b"\xff\xfe\x00 not utf-8 \x80", b"", bytes(range(256)) * 40]
        for payload in payloads:
            await publisher.publish("room", payload)
        for payload in payloads:
            assert await inbox.next() == ("room", payload)
        assert publisher.healthy
        assert subscriber.healthy


async def test_channels_not_subscribed_are_not_delivered(make_broker: BrokerFactory) -> None:
    async with (
        make_broker() as publisher,
        make_broker() as subscriber,
        Listener(subscriber) as inbox,
    ):
        await subscriber.subscribe("room")
        await subscriber.subscribe("gone")
        await subscriber.unsubscribe("gone")
        await publisher.publish("elsewhere", b"never subscribed")
        await publisher.publish("gone", b"unsubscribed")
        await publisher.publish("room", b"marker")
        # Redis delivers in publishing order: had the others arrived, they would be first.
        assert await inbox.next() == ("room", b"marker")
        assert inbox.received.empty()


async def test_the_publisher_receives_its_own_messages(make_broker: BrokerFactory) -> None:
    async with make_broker() as broker, Listener(broker) as inbox:
        await broker.subscribe("room")
        await broker.publish("room", b"echo")
        assert await inbox.next() == ("room", b"echo")


async def test_prefixes_separate_applications(make_broker: BrokerFactory) -> None:
    async with (
        make_broker(prefix=f"other-{uuid.uuid4().hex}") as stranger,
        make_broker() as publisher,
        make_broker() as subscriber,
        Listener(subscriber) as inbox,
    ):
        await subscriber.subscribe("room")
        await stranger.publish("room", b"another app")
        await publisher.publish("room", b"ours")
        assert await inbox.next() == ("room", b"ours")


async def test_a_burst_of_publishes_waits_for_connections_and_fails_none(
    make_broker: BrokerFactory,
) -> None:
    async with (
        make_broker(max_connections=2) as publisher,
        make_broker() as subscriber,
        Listener(subscriber) as inbox,
    ):
        await subscriber.subscribe("room")
        sent = {b"%d" % i for i in range(2000)}
        await asyncio.gather(*(publisher.publish("room", data) for data in sent))
        received = {(await inbox.next())[1] for _ in sent}
        assert received == sent
        assert publisher.healthy


async def test_stop_ends_listen(make_broker: BrokerFactory) -> None:
    async with make_broker() as broker, Listener(broker) as inbox:
        await broker.subscribe("room")
        await broker.publish("room", b"one")
        assert await inbox.next() == ("room", b"one")
        assert inbox.task is not None
        started = time.perf_counter()
        await broker.stop()  # listen is waiting for a message right now
        async with asyncio.timeout(1):
            await inbox.task  # the async for finished, without an error
        assert time.perf_counter() - started < 0.5
        with pytest.raises(BrokerUnavailable, match="stopped"):
            await broker.publish("room", b"too late")


# History.


async def test_history_keeps_the_last_maxlen_entries_oldest_first(
    make_broker: BrokerFactory,
) -> None:
    async with make_broker() as writer, make_broker() as reader:
        entries = [await writer.add_history("log", f"m{i}".encode(), maxlen=3) for i in range(5)]
        assert [e.data for e in entries] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
        ids = [tuple(int(part) for part in e.id.split("-")) for e in entries]
        assert ids == sorted(ids)
        assert len(set(ids)) == 5
        assert all(abs(e.timestamp - time.time()) < 5 for e in entries)

        kept = await reader.history("log")  # another process sees the same history
        assert kept == entries[2:]
        assert await reader.history("log", count=2) == entries[3:]
        assert await reader.history("log", count=10) == entries[2:]
        assert await reader.history("log", count=0) == []
        assert await reader.history("never written") == []
        with pytest.raises(ValueError, match="maxlen"):
            await writer.add_history("log", b"x", maxlen=0)


async def test_clear_history_of_one_channel_or_of_the_prefix(
    make_broker: BrokerFactory,
) -> None:
    async with make_broker() as broker, make_broker(prefix=f"other-{uuid.uuid4().hex}") as other:
        for channel in ("a", "b", "c"):
            await broker.add_history(channel, channel.encode(), maxlen=10)
        await other.add_history("a", b"other app", maxlen=10)

        await broker.clear_history("a")
        assert await broker.history("a") == []
        assert [e.data for e in await broker.history("b")] == [b"b"]

        await broker.clear_history()
        assert await broker.history("b") == []
        assert await broker.history("c") == []
        assert [e.data for e in await other.history("a")] == [b"other app"]
        await other.clear_history()


async def test_history_ttl_expires_the_stream(
    make_broker: BrokerFactory, redis_url: str, prefix: str
) -> None:
    async with make_broker(history_ttl=30) as broker:
        await broker.add_history("log", b"x", maxlen=10)
        raw = aioredis.Redis.from_url(redis_url)
        try:
            ttl = await raw.pttl(f"{prefix}:history:log")
        finally:
            await raw.aclose()
        assert 0 < ttl <= 30_000


# Reconnection.


async def kill_pubsub_connection(redis_url: str, broker: RedisBroker) -> None:
    """Close the broker's pub/sub connection from the server side (CLIENT KILL ID)."""
    raw = aioredis.Redis.from_url(redis_url)
    try:
        clients = await raw.client_list(_type="pubsub")
        ids = [c["id"] for c in clients if c["name"] == f"{broker.prefix}:pubsub"]
        assert len(ids) == 1, clients
        assert await raw.client_kill_filter(_id=ids[0]) == 1
    finally:
        await raw.aclose()


async def test_listen_reconnects_and_resubscribes_after_its_connection_is_killed(
    make_broker: BrokerFactory, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexios.channels")
    async with (
        make_broker() as publisher,
        make_broker() as subscriber,
        Listener(subscriber) as inbox,
    ):
        await subscriber.subscribe("room")
        await subscriber.subscribe("lobby")
        await publisher.publish("room", b"before")
        assert await inbox.next() == ("room", b"before")

        for outage in (1, 2):
            await kill_pubsub_connection(redis_url, subscriber)
            await wait_until(lambda: not subscriber.healthy, "unhealthy")
            await wait_until(lambda: subscriber.healthy, "healthy again")
            # Both channels were subscribed again before healthy turned True.
            await publisher.publish("lobby", b"after %d" % outage)
            await publisher.publish("room", b"after %d" % outage)
            assert await inbox.next() == ("lobby", b"after %d" % outage)
            assert await inbox.next() == ("room", b"after %d" % outage)

    logs = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "nexios.channels"]
    assert [level for level, _ in logs] == ["WARNING", "INFO"] * 2  # once per outage
    assert "unavailable" in logs[0][1]
    assert "local delivery continues, reconnecting" in logs[0][1]
    assert "reachable again" in logs[1][1]


async def test_redis_restart(
    make_broker: BrokerFactory,
    private_redis: PrivateRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="nexios.channels")
    url = private_redis.url
    async with (
        make_broker(url=url) as publisher,
        make_broker(url=url) as subscriber,
        Listener(subscriber) as inbox,
    ):
        await subscriber.subscribe("room")
        await publisher.publish("room", b"before")
        assert await inbox.next() == ("room", b"before")

        await private_redis.kill()
        await wait_until(lambda: not subscriber.healthy, "unhealthy")
        started = time.perf_counter()
        with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{private_redis.port}"):
            await publisher.publish("room", b"lost")
        assert time.perf_counter() - started < 1.5
        assert not publisher.healthy
        with pytest.raises(BrokerUnavailable):
            await publisher.history("room")
        await subscriber.subscribe("lobby")  # during the outage: made on reconnection

        await private_redis.start()
        await wait_until(lambda: subscriber.healthy, "healthy again")
        # The publisher's commands were known down: its probe finds Redis back.
        await wait_until(lambda: publisher.healthy, "the publisher healthy again")
        await publisher.publish("room", b"after 1")
        await publisher.publish("lobby", b"after 2")
        assert publisher.healthy
        assert await inbox.next() == ("room", b"after 1")
        assert await inbox.next() == ("lobby", b"after 2")

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # however many retries
    assert f"127.0.0.1:{private_redis.port}/0 unavailable" in warnings[0].getMessage()


async def test_a_silent_server_is_detected_by_ping(
    make_broker: BrokerFactory, private_redis: PrivateRedis
) -> None:
    url = private_redis.url
    options = {"timeout": 0.3, "health_check_interval": 0.2}
    async with (
        make_broker(url=url, **options) as publisher,
        make_broker(url=url, **options) as subscriber,
        Listener(subscriber) as inbox,
    ):
        await subscriber.subscribe("room")
        private_redis.signal(signal.SIGSTOP)  # connections stay open, nothing answers
        try:
            waited = await wait_until(lambda: not subscriber.healthy, "unhealthy")
            assert waited < 1.5
            # A burst fails in about one timeout (0.3 s), not one timeout per message.
            started = time.perf_counter()
            burst = [publisher.publish("room", b"lost") for _ in range(100)]
            failures = await asyncio.gather(*burst, return_exceptions=True)
            assert all(isinstance(failure, BrokerUnavailable) for failure in failures)
            assert time.perf_counter() - started < 1.0
            assert not publisher.healthy
        finally:
            private_redis.signal(signal.SIGCONT)
        await wait_until(lambda: subscriber.healthy, "healthy again")
        await wait_until(lambda: publisher.healthy, "the publisher healthy again")
        await publisher.publish("room", b"after")
        assert await inbox.next() == ("room", b"after")


async def test_starts_and_stops_without_redis(
    make_broker: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with make_broker(url=url) as broker, Listener(broker):
        assert not broker.healthy
        started = time.perf_counter()
        with pytest.raises(BrokerUnavailable):
            await broker.publish("room", b"lost")
        with pytest.raises(BrokerUnavailable):
            await broker.add_history("room", b"lost", maxlen=1)
        await broker.subscribe("room")  # returns at once, kept for when Redis comes
        assert time.perf_counter() - started < 0.5
    # Leaving the block stopped the broker, which ended listen while it waited to retry.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
