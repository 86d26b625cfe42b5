"""Two real nexios server processes sharing a private Redis: rooms across processes, and
what a user notices when Redis restarts mid-stream.

Each test starts its own ``redis-server`` on a free port of 127.0.0.1 (in a temporary
directory, nothing saved), then two ``nexios run tests.cluster_app:app`` processes with
``NEXIOS_BROKER_URL`` pointing at it, and talks to them as a user would: ``websockets``
clients on ``/rooms/{room}``, ``httpx`` for ``POST /rooms/{room}/publish`` and the
``GET /health`` readiness probe. Every wait polls up to a deadline; that a message did
*not* arrive is proven by a later marker message arriving first, never by a sleep.
Everything is stopped in ``finally`` (servers with SIGTERM, killed if they hang), and each
server's output goes to a file that failure messages quote.

No ``redis-server`` on PATH: skipped, except in CI (``CI=true``) where it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from _redis import PrivateRedis, require_redis_server
from _servers import AppServer, poll

pytestmark = pytest.mark.redis

APP = "tests.cluster_app:app"
DEADLINE = 5.0  # any other wait
OUTAGE_DETECTED = 3.0  # both servers report broker_healthy: false this soon after the kill
OUTAGE = 2.5  # seconds Redis stays down mid-stream: the reconnection backoff reaches its cap
RECOVERED = 4.0  # ... and true again this soon after the restart (backoff caps at 2 s)
STREAM_INTERVAL = 0.02  # seconds between two messages of the numbered stream


class Server(AppServer):
    """``nexios run tests.cluster_app:app`` in a process of its own."""

    def __init__(self, name: str, broker_url: str, directory: Path) -> None:
        super().__init__(name, APP, directory, {"NEXIOS_BROKER_URL": broker_url})

    async def publish(self, http: httpx.AsyncClient, room: str, payload: Any) -> int:
        """POST the payload to the room; the number of this server's members it reached."""
        response = await http.post(f"{self.http}/rooms/{room}/publish", json=payload, timeout=5)
        assert response.status_code == 200, response.text
        local: int = response.json()["local"]
        return local


@dataclass
class Member:
    """A WebSocket client in a room; a task collects every message it receives."""

    name: str
    conn: ClientConnection
    received: list[Any] = field(default_factory=list)
    closed: ConnectionClosed | None = None
    task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        try:
            async for message in self.conn:
                self.received.append(json.loads(message))
        except ConnectionClosed as exc:
            self.closed = exc

    def numbers(self, sender: str) -> list[int]:
        """The ``n`` of the stream messages from *sender*, in the order received."""
        return [m["n"] for m in self.received if m.get("from") == sender and "n" in m]


@dataclass
class Cluster:
    redis: PrivateRedis
    a: Server
    b: Server
    http: httpx.AsyncClient
    stack: contextlib.AsyncExitStack

    def logs(self) -> str:
        return "".join(
            f"\n----- server {s.name} (port {s.port}) output -----\n{s.log()}"
            for s in (self.a, self.b)
        )

    async def wait(self, condition: Callable[[], Awaitable[bool] | bool], what: str) -> float:
        """Poll *condition* (sync or async) every 10 ms up to DEADLINE; seconds it took."""
        return await poll(condition, what, DEADLINE, self.logs, interval=0.01)

    async def join(self, server: Server, room: str, name: str) -> Member:
        """Connect to ``/rooms/{room}``; return once the "joined" message arrived."""
        conn = await self.stack.enter_async_context(
            connect(f"{server.ws}/rooms/{room}", open_timeout=DEADLINE, close_timeout=2)
        )
        try:
            first = json.loads(await asyncio.wait_for(conn.recv(), DEADLINE))
        except (TimeoutError, ConnectionClosed) as exc:
            pytest.fail(f"{name}: no 'joined' message ({exc!r}).{self.logs()}", pytrace=False)
        assert first == {"type": "joined", "room": room}, self.logs()
        member = Member(name, conn)
        member.task = asyncio.create_task(member._read())
        self.stack.push_async_callback(_finish, member)
        return member

    async def healthy(self) -> tuple[bool, bool]:
        a, b = await asyncio.gather(self.a.health(self.http), self.b.health(self.http))
        return a["broker_healthy"], b["broker_healthy"]


async def _finish(member: Member) -> None:
    if member.task is not None:
        member.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await member.task


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """A private redis-server and two servers A and B sharing it, all stopped afterwards."""
    require_redis_server()
    async with contextlib.AsyncExitStack() as stack:
        redis = PrivateRedis(tmp_path)
        stack.push_async_callback(redis.kill)
        await redis.start()
        http = await stack.enter_async_context(httpx.AsyncClient())
        a, b = Server("A", redis.url, tmp_path), Server("B", redis.url, tmp_path)
        stack.push_async_callback(b.stop)
        stack.push_async_callback(a.stop)
        await asyncio.gather(a.start(http), b.start(http))
        # Clients (entered later) close before the servers stop, and those before Redis.
        cluster = Cluster(redis, a, b, http, stack)
        try:
            yield cluster
        finally:
            # Shown by pytest only when the test fails.
            print(cluster.logs())


# Rooms across processes.


async def test_a_room_spans_both_servers(cluster: Cluster) -> None:
    a, b, http = cluster.a, cluster.b, cluster.http
    assert await cluster.healthy() == (True, True), cluster.logs()
    on_a = await cluster.join(a, "lobby", "lobby@A")
    on_b = await cluster.join(b, "lobby", "lobby@B")
    other_a = await cluster.join(a, "other", "other@A")
    other_b = await cluster.join(b, "other", "other@B")

    # A publish reaches the members of both processes; the local count is this process's.
    assert await a.publish(http, "lobby", {"from": "A", "n": 1}) == 1
    await cluster.wait(lambda: len(on_b.received) == 1, "received by the client on B")
    assert await b.publish(http, "lobby", {"from": "B", "n": 2}) == 1
    await cluster.wait(lambda: len(on_a.received) == 2, "received by the client on A")
    assert on_a.received == [{"from": "A", "n": 1}, {"from": "B", "n": 2}], cluster.logs()
    assert on_b.received == on_a.received, cluster.logs()

    # The other room got none of it: a marker sent after arrives first, on both servers.
    # (Each server delivers a group's messages in the order its broker connection got
    # them, and the lobby messages reached Redis before the marker did.)
    assert await b.publish(http, "other", {"marker": True}) == 1
    await cluster.wait(lambda: bool(other_a.received and other_b.received), "marker received")
    assert other_a.received == [{"marker": True}], cluster.logs()
    assert other_b.received == [{"marker": True}], cluster.logs()
    assert on_a.received == on_b.received == [{"from": "A", "n": 1}, {"from": "B", "n": 2}]

    health_a, health_b = await a.health(http), await b.health(http)
    assert health_a["stats"]["received_remote"] == 2  # B's lobby message and the marker
    assert health_b["stats"]["received_remote"] == 1  # A's lobby message
    assert health_a["stats"]["publish_failed"] == health_b["stats"]["publish_failed"] == 0


# Redis restarts mid-stream.


@dataclass
class Sent:
    n: int
    started: float  # time.monotonic() before the POST
    done: float  # ... once it answered


async def stream(server: Server, http: httpx.AsyncClient, stop: asyncio.Event) -> list[Sent]:
    """POST {"from": name, "n": 0, 1, ...} to the lobby every STREAM_INTERVAL until *stop*."""
    sent: list[Sent] = []
    while not stop.is_set():
        started = time.monotonic()
        local = await server.publish(http, "lobby", {"from": server.name, "n": len(sent)})
        # Local delivery never depends on Redis: one member here, always reached.
        assert local == 1, f"message {len(sent)} reached {local} local members"
        sent.append(Sent(len(sent), started, time.monotonic()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STREAM_INTERVAL)
    return sent


async def test_redis_restart_mid_stream(cluster: Cluster) -> None:
    """Both servers stream numbered messages to the lobby while Redis dies and comes back."""
    a, b, http, redis = cluster.a, cluster.b, cluster.http, cluster.redis
    on_a = await cluster.join(a, "lobby", "lobby@A")
    on_b = await cluster.join(b, "lobby", "lobby@B")
    clients = {"A": on_a, "B": on_b}

    stop = asyncio.Event()
    publishers = {s.name: asyncio.create_task(stream(s, http, stop)) for s in (a, b)}

    def died() -> bool:  # a publisher failed: stop waiting, its error is raised below
        return any(task.done() for task in publishers.values())

    def streamed(count: int) -> bool:
        """Each client got at least *count* messages from its own server (or a task died)."""
        return died() or all(len(clients[name].numbers(name)) >= count for name in clients)

    try:
        # Before: the streams flow both ways.
        await cluster.wait(
            lambda: all(len(c.numbers(other)) >= 10 for c, other in ((on_a, "B"), (on_b, "A"))),
            "streaming both ways",
        )
        caught_up = {"A": on_b.numbers("A")[-1], "B": on_a.numbers("B")[-1]}

        await redis.kill()
        killed = time.monotonic()
        outage_seen = await cluster.wait(
            lambda: _both(cluster, False), "broker_healthy false on both servers"
        )
        # Let the streams run with Redis down, long enough for the reconnection backoff
        # to reach its cap (0.05 s doubling to 2 s: about 1.5 to 3 s of retries).
        await cluster.wait(
            lambda: died() or time.monotonic() - killed > OUTAGE,
            "streaming while down",
        )
        # A client joins a new room on B during the outage: B must subscribe it later.
        late = await cluster.join(b, "late", "late@B")

        restarting = time.monotonic()
        await redis.start()  # the same port
        restart_took = time.monotonic() - restarting
        recovery = await cluster.wait(lambda: _both(cluster, True), "healthy again on both")
        recovered = time.monotonic()
        marks = {name: len(clients[name].numbers(name)) for name in clients}
        await cluster.wait(lambda: streamed(max(marks.values()) + 15), "streaming after recovery")
    finally:
        stop.set()
        done = await asyncio.wait_for(asyncio.gather(*publishers.values()), DEADLINE)
    sent = dict(zip(publishers, done, strict=True))

    for sender, receiver in (("A", "B"), ("B", "A")):
        last = sent[sender][-1].n
        own, remote = clients[sender], clients[receiver]
        # The sender's own client noticed nothing: every message, in order, throughout.
        await cluster.wait(got_number(own, sender, last), f"all on {sender}")
        assert own.numbers(sender) == list(range(last + 1)), cluster.logs()

        # The other server's client: everything before the outage, nothing while Redis was
        # dead, everything published once both servers said they were healthy again; in
        # order and never twice (at most once).
        await cluster.wait(got_number(remote, sender, last), f"{sender}'s last on {receiver}")
        got = remote.numbers(sender)
        assert got == sorted(set(got)), f"{sender} -> {receiver}: out of order or twice: {got}"
        first = caught_up[sender] + 1
        assert got[:first] == list(range(first)), f"{sender} -> {receiver}: {got}"
        dead = [m.n for m in sent[sender] if m.started > killed and m.done < restarting]
        after = [m.n for m in sent[sender] if m.started > recovered]
        assert len(dead) >= 5, f"{sender}: too few messages published while down: {dead}"
        assert len(after) >= 5, f"{sender}: too few messages published after recovery: {after}"
        assert not set(dead) & set(got), f"{receiver} got {sender}'s messages sent while down"
        missed = sorted(set(after) - set(got))
        assert not missed, f"{receiver} missed {sender}'s {missed} after recovery{cluster.logs()}"

        # The probe's counters: the outage's messages failed to reach Redis, and the other
        # server received exactly what its client got.
        sender_stats = (await (a if sender == "A" else b).health(http))["stats"]
        assert sender_stats["publish_failed"] >= len(dead), sender_stats

    # Health flipped both ways, in bounded time.
    assert outage_seen < OUTAGE_DETECTED, f"outage reported after {outage_seen:.2f} s"
    assert recovery < RECOVERED, f"recovery reported {recovery:.2f} s after the restart"

    # The room B joined during the outage was subscribed on reconnection.
    assert await a.publish(http, "late", {"from": "A", "n": 0}) == 0
    await cluster.wait(lambda: late.numbers("A") == [0], "A's message in the room joined late")
    stats = {s.name: (await s.health(http))["stats"] for s in (a, b)}
    assert stats["A"]["received_remote"] == len(on_a.numbers("B")), stats
    assert stats["B"]["received_remote"] == len(on_b.numbers("A")) + 1, stats

    # One warning per outage in each server's log, not one per message or retry.
    for server in (a, b):
        log = server.log()
        assert log.count("local delivery continues, reconnecting") == 1, cluster.logs()
        assert log.count("messages reach this process's members only") == 1, cluster.logs()
    print(
        f"\noutage seen in {outage_seen:.2f} s; redis restarted in {restart_took:.2f} s; "
        f"healthy again {recovery:.2f} s later; sent {len(sent['A'])} + {len(sent['B'])}"
    )


async def test_an_idle_server_publishes_after_redis_restarts(cluster: Cluster) -> None:
    a, b, http, redis = cluster.a, cluster.b, cluster.http, cluster.redis
    on_a = await cluster.join(a, "lobby", "lobby@A")
    await cluster.join(b, "lobby", "lobby@B")
    assert await b.publish(http, "lobby", {"from": "B", "n": 0}) == 1
    await cluster.wait(lambda: on_a.numbers("B") == [0], "B's message on A")

    await redis.kill()
    await cluster.wait(lambda: _both(cluster, False), "broker_healthy false on both servers")
    await redis.start()
    await cluster.wait(lambda: _both(cluster, True), "healthy again on both")

    # B published nothing during the outage; the readiness probe says it is ready.
    assert await b.publish(http, "lobby", {"from": "B", "n": 1}) == 1
    assert await b.publish(http, "lobby", {"from": "B", "n": 2}) == 1
    await cluster.wait(lambda: 2 in on_a.numbers("B"), "B's last message on A")
    health = await b.health(http)
    # Same publisher, same order: had 1 arrived, it would be there before 2.
    assert on_a.numbers("B") == [0, 1, 2], (on_a.numbers("B"), health)
    assert health["broker_healthy"], health
    assert health["stats"]["publish_failed"] == 0, health


def got_number(member: Member, sender: str, n: int) -> Callable[[], bool]:
    return lambda: n in member.numbers(sender)


def _closed(member: Member) -> bool:
    return member.closed is not None


async def _both(cluster: Cluster, healthy: bool) -> bool:
    return await cluster.healthy() == (healthy, healthy)


# Stopping.


async def test_servers_stop_on_sigterm_even_with_redis_down(cluster: Cluster) -> None:
    a, b, redis = cluster.a, cluster.b, cluster.redis
    on_a = await cluster.join(a, "lobby", "lobby@A")
    on_b = await cluster.join(b, "lobby", "lobby@B")
    await redis.kill()
    await cluster.wait(lambda: _both(cluster, False), "broker_healthy false on both servers")

    took = await asyncio.gather(a.stop(), b.stop())
    for server, seconds in zip((a, b), took, strict=True):
        log = server.log()
        assert "[test] killed" not in log, f"{server.name} ignored SIGTERM{cluster.logs()}"
        assert seconds < 5, f"{server.name} took {seconds:.1f} s to stop{cluster.logs()}"
        # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
        assert server.returncode in (0, -signal.SIGTERM), cluster.logs()
        assert "Application shutdown complete" in log, cluster.logs()
        assert "Traceback" not in log, cluster.logs()
    # The clients were told: 1012 (service restart), a clean close.
    for member in (on_a, on_b):
        await cluster.wait(functools.partial(_closed, member), f"{member.name} closed")
        assert member.closed is not None
        assert member.closed.rcvd is not None
        assert member.closed.rcvd.code == 1012, (member.closed, cluster.logs())


# Resume after an abrupt disconnect, on another process.

CUT_OFF = 2.0  # seconds a client stays away, mid-stream (issue 11)


async def resume_after_cut(http: httpx.AsyncClient, first: AppServer, second: AppServer) -> None:
    """A client on *first* is cut off abruptly (no close frame) while both servers
    publish a numbered stream, stays away CUT_OFF seconds, and rejoins on *second* with
    the last position it saw: it gets exactly the messages it missed, then live ones."""
    servers = [first, second] if first is not second else [first]
    stop = asyncio.Event()
    published: list[int] = []

    async def stream(server: AppServer) -> None:
        while not stop.is_set():
            n = len(published)
            published.append(n)
            response = await http.post(
                f"{server.http}/rooms/live/publish", json={"n": n}, timeout=DEADLINE
            )
            assert response.status_code == 200, response.text
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STREAM_INTERVAL)

    async def envelopes(conn: ClientConnection, into: list[dict[str, Any]]) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for text in conn:
                into.append(json.loads(text))

    def log() -> str:
        return "".join(f"\n----- {s.name} -----\n{s.log()}" for s in servers)

    before: list[dict[str, Any]] = []
    after: list[dict[str, Any]] = []
    conn = await connect(f"{first.ws}/feed/live", open_timeout=DEADLINE)
    assert json.loads(await asyncio.wait_for(conn.recv(), DEADLINE))["recovered"] is True
    reading = asyncio.create_task(envelopes(conn, before))
    publishers = [asyncio.create_task(stream(s)) for s in servers]
    try:
        await poll(lambda: len(before) >= 20, "20 messages before the cut", DEADLINE, log)
        conn.transport.abort()  # a network failure: no close frame, nothing more read
        reading.cancel()
        cut = len(published)
        await asyncio.sleep(CUT_OFF)  # the scenario: away for 2 s while the stream goes on
        last = before[-1]
        since = f"{last['offset']}:{last['epoch']}"
        async with connect(f"{second.ws}/feed/live?since={since}", open_timeout=DEADLINE) as again:
            hello = json.loads(await asyncio.wait_for(again.recv(), DEADLINE))
            assert hello["recovered"] is True, (hello, log())
            reading = asyncio.create_task(envelopes(again, after))
            missed_while_away = len(published) - cut
            await poll(
                lambda: len(after) >= missed_while_away + 20, "the missed ones, then live", 10, log
            )
            stop.set()
            await asyncio.gather(*publishers)
            await poll(
                lambda: len(before) + len(after) >= len(published),
                "the last message",
                DEADLINE,
                log,
            )
            reading.cancel()
    finally:
        stop.set()
        for task in publishers:
            if not task.done():
                task.cancel()
        with contextlib.suppress(Exception):
            await conn.close()
    offsets = [m["offset"] for m in before + after]
    # No gap, no duplicate: one stream, offsets 1, 2, 3, ... across the reconnection.
    assert offsets == list(range(1, len(offsets) + 1)), (offsets, log())
    assert len(offsets) == len(published), (len(offsets), len(published))
    assert sorted(m["data"]["n"] for m in before + after) == published
    assert missed_while_away >= 2 * CUT_OFF / STREAM_INTERVAL / 4, missed_while_away


async def test_a_client_cut_off_rejoins_on_the_other_server_with_nothing_missed(
    cluster: Cluster,
) -> None:
    await resume_after_cut(cluster.http, cluster.a, cluster.b)


async def test_a_client_cut_off_rejoins_on_memory_with_nothing_missed(tmp_path: Path) -> None:
    async with httpx.AsyncClient() as http:
        server = AppServer("M", APP, tmp_path, {"NEXIOS_BROKER_URL": "memory://"})
        try:
            await server.start(http)
            await resume_after_cut(http, server, server)
        finally:
            await server.stop()
