"""The channel layer: groups, their logs, fan-out, and the broker between processes.

::

    publish(group, payload) -> encode once -> broker.append: the group's log, a position
        -> fan-out: live members' sockets, written at once
                    a member whose socket is full falls behind in the log (a cursor)
                    and its writer catches it up as the socket drains
        -> other processes: the announcement -> their copy of the log -> their fan-out

What is promised (docs/channels.md has the table): every group message gets a position
(epoch, offset); a member that reads gets every message, in offset order, even when a
publisher floods it (publishers are paced by members that read, for a bounded time);
a member that falls off the end of the log meets its slow-consumer policy, counted and
logged; a member that joins with ``since=`` gets every message after it, or is told it
cannot (``recovered`` False). Messages to connections by id (``send_to``) are outside
the logs: at most once, a bounded queue per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import orjson

from nexios._tasks import spawn
from nexios.channels.brokers.base import (
    Broker,
    BrokerOutcomeUnknown,
    BrokerRefused,
    BrokerUnavailable,
    Logged,
    parse_announcement,
)
from nexios.channels.brokers.memory import MemoryBroker
from nexios.channels.fanout import deliver, form, message_for, put_behind, skip_notice
from nexios.channels.log import MAX_OFFSET, Bounds, GroupLog, PayloadKind, Position
from nexios.channels.registry import (
    Group,
    Member,
    Registry,
    Sink,
    SlowConsumerPolicy,
    policy_of,
)
from nexios.exceptions import ImproperlyConfigured, WebSocketStateError
from nexios.types import Message

__all__ = [
    "ChannelLayer",
    "ChannelStats",
    "Joined",
    "Published",
    "broker_from_url",
    "current_layer",
]

logger = logging.getLogger("nexios.channels")

Encoding = Literal["auto", "json", "text", "bytes"]

# Broker channel names: user groups, and the one channel for messages addressed by id.
_GROUP = "g:"
_DIRECT = "direct"

# Fan-out holds the event loop for at most about this long (seconds) before it lets the
# loop run: a handler publishing in a loop, or one publish to a huge group, must not
# freeze every other connection (HTTP requests, pings, SIGTERM).
SLICE = 0.005
# A fan-out larger than this many members reads the clock between chunks of it.
_CHUNK = 512


def broker_from_url(url: str | None) -> Broker:
    """The broker a URL names: ``memory://[name]`` or ``redis://host:port/db``."""
    if not url:
        return MemoryBroker()
    scheme, _, rest = url.partition("://")
    if scheme == "memory":
        return MemoryBroker(rest)
    if scheme in ("redis", "rediss", "unix"):
        from nexios.channels.brokers.redis import RedisBroker

        return RedisBroker(url)
    raise ImproperlyConfigured(
        f"Unknown broker URL {url!r}: use memory:// (one process) or redis://host:port/db."
    )


_current: ChannelLayer | None = None


def current_layer() -> ChannelLayer:
    """The layer of the app that started last in this process (for ``ChannelBox``)."""
    if _current is None:
        raise ImproperlyConfigured(
            "No channel layer is running in this process: start the NexiosApp (its "
            "lifespan starts app.channels), or add a channel to a group first."
        )
    return _current


class ChannelStats:
    """Counters of what the layer did and lost; a readiness probe or metrics can read them.

    Every message handed to a shared broker ends in exactly one of ``published_remote``,
    ``publish_failed`` and ``publish_unknown``; see docs/channels.md.
    """

    __slots__ = (
        "closed_slow",
        "delivered",
        "dropped",
        "gap_filled",
        "history_failed",
        "missed_remote",
        "paced",
        "publish_failed",
        "publish_refused",
        "publish_unknown",
        "published",
        "published_remote",
        "received_remote",
        "recovered",
        "recovery_failed",
        "skipped",
        "slow",
    )

    def __init__(self) -> None:
        self.published = 0  # publish() and send_to() calls
        self.delivered = 0  # messages written to local members' sockets
        self.dropped = 0  # messages to connections by id dropped by a full queue
        self.closed_slow = 0  # members closed when they fell off a log ("close")
        self.skipped = 0  # log entries members did not get ("skip", or a lost stretch)
        self.paced = 0  # publishes that waited for a member that is behind
        self.slow = 0  # times a member held a publisher back too long (then paces nobody)
        self.recovered = 0  # joins with since= that got everything after the position
        self.recovery_failed = 0  # ... that could not (trimmed, another epoch)
        # Messages for the other processes: the broker took them (Redis answered) ...
        self.published_remote = 0
        # ... they certainly did not reach the broker: the other processes lost them ...
        self.publish_failed = 0
        # ... (of those, refused at once because the broker was known down) ...
        self.publish_refused = 0
        # ... or sent with no reply: they may or may not have reached the other processes.
        self.publish_unknown = 0
        self.received_remote = 0  # messages from other processes
        # Messages of other processes this one did not receive and could not recover
        # from the log (gaps in offsets, or in the numbers of messages sent by id).
        self.missed_remote = 0
        # Messages this process did not receive when published but read back from the
        # log (its broker connection dropped, or announcements came out of order).
        self.gap_filled = 0
        # Kept for the name: logs replaced save_history; always 0.
        self.history_failed = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"ChannelStats({self.as_dict()})"


class _Sequences:
    """Per-publisher message numbers, in one place: stamped on what this process
    publishes (per channel, 1, 2, ...), checked on what it receives (per channel and
    publishing process), so that a gap counts the messages missed.

    Bounded: this process numbers at most ``CHANNELS`` channels (the least recently
    published is forgotten, and starts again at 1, which a receiver takes as a fresh
    start), and follows at most ``ORIGINS`` publishers per channel it is subscribed to
    (a channel's numbers are forgotten when it unsubscribes).
    """

    CHANNELS = 65_536
    ORIGINS = 64

    __slots__ = ("_last", "_next")

    def __init__(self) -> None:
        self._next: dict[str, int] = {}
        self._last: dict[str, dict[str, int]] = {}

    def stamp(self, channel: str) -> int:
        """The number of this process's next message on *channel*."""
        numbers = self._next
        n = numbers.pop(channel, 0) + 1  # popped and put back: the most recent, last
        numbers[channel] = n
        if len(numbers) > self.CHANNELS:
            del numbers[next(iter(numbers))]
        return n

    def missed(self, origin: str, channel: str, n: int) -> int:
        """How many messages of *origin* on *channel* were missed before number *n*;
        -1 for a message that comes after a later one (it was counted missed then)."""
        seen = self._last.get(channel)
        if seen is None:
            seen = self._last[channel] = {}
        last = seen.get(origin)
        if last is None or n == 1:  # the first one seen, or the publisher started again
            seen[origin] = n
            if len(seen) > self.ORIGINS:
                del seen[next(iter(seen))]
            return 0
        if n > last:
            seen[origin] = n
            return n - last - 1
        # Concurrent publishes of one process may reach the broker in another order.
        return -1

    def forget(self, channel: str) -> None:
        self._last.pop(channel, None)


# A gap in another process's numbers is logged at most once in this many seconds (the
# count goes on).
_MISSED_LOG_INTERVAL = 10.0


def _encode(payload: Any) -> tuple[PayloadKind, bytes]:
    """Encode a payload once: str as text, bytes as binary, anything else as JSON."""
    if isinstance(payload, str):
        return "text", payload.encode()
    if isinstance(payload, bytes | bytearray | memoryview):
        return "bytes", bytes(payload)
    return "json", orjson.dumps(payload)


def _decode(kind: str, body: bytes) -> Any:
    if kind == "json":
        return orjson.loads(body)
    if kind == "text":
        return body.decode()
    return body


_UNSET: Any = object()


class Published(int):
    """What ``publish`` returns: an int, the number of local members the message was
    written to at once (as before), with ``position``, where it sits in the group's log
    (None when the broker could not log it: then only local members got it)."""

    position: Position | None

    def __new__(cls, delivered: int, position: Position | None) -> Published:
        self = super().__new__(cls, delivered)
        self.position = position
        return self

    @property
    def delivered(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return f"Published(delivered={int(self)}, position={self.position})"


@dataclass(frozen=True, slots=True)
class Joined:
    """What ``join`` returns. ``position``: where the member starts in the group's
    stream (the last position it has, or is being sent). With ``since``: ``recovered``
    says whether every message after it is being sent (``replayed`` of them), else
    ``reason`` says why not (``"epoch"``: the stream it counted in is gone,
    ``"trimmed"``: the log no longer reaches back, ``"future"``: never that far,
    ``"unavailable"``: the broker could not be read) and the member gets messages from
    ``position`` on: the app decides what to do (send a snapshot, tell the user)."""

    recovered: bool
    position: Position | None
    replayed: int = 0
    reason: str | None = None


# What a member that falls off a log with the "close" policy is closed with: 1013 (try
# again later): the client reconnects and joins with its last position.
SLOW_CONSUMER_CLOSE = (1013, "Fell behind the group's log: rejoin with your last position")

# A publisher waits for a member that is behind by more than this many messages (and
# never more than half of what the log can hold).
PACE_HIGH_WATER = 256
# ... for at most this many seconds in a row; past it the member paces nobody.
PACE_TIMEOUT = 1.0
# Entries a writer sends before it looks at the group again (and wakes a publisher).
_WRITE_BATCH = 32
# Seconds an announcement waits for the ones before it before the gap is read from the
# broker's log.
_REORDER_WINDOW = 0.1
# Seconds a publish waits for its own message to be fanned out here (gap filling).
_OWN_WAIT = 2.0
# The offset a skip notice waits for in a member's direct queue: none (it never blocks);
# it marks the notice, so that a later skip of the same group finds it.
_NOTICE = -1
# Message ids published while the broker's outcome was unknown, remembered so that a
# late announcement of one is not delivered twice here.
_UNLOGGED_IDS = 4096


class ChannelLayer:
    """Groups of connections, in this process and, through the broker, in all of them."""

    def __init__(
        self,
        broker: Broker | str | None = None,
        *,
        outbox_size: int = 256,
        slow_consumer: SlowConsumerPolicy = "close",
        history_size: int = 100,
        log: Bounds | None = None,
        pace_high_water: int = PACE_HIGH_WATER,
        pace_timeout: float = PACE_TIMEOUT,
    ) -> None:
        if broker is None:
            broker = os.environ.get("NEXIOS_BROKER_URL") or None
        self.broker: Broker = broker if isinstance(broker, Broker) else broker_from_url(broker)
        if outbox_size < 1:
            raise ValueError("outbox_size must be at least 1.")
        policy_of(slow_consumer)
        if pace_high_water < 1:
            raise ValueError("pace_high_water must be at least 1 message.")
        if not pace_timeout >= 0:
            raise ValueError("pace_timeout must be a number of seconds >= 0.")
        self.outbox_size = outbox_size
        self.slow_consumer: SlowConsumerPolicy = slow_consumer
        self.history_size = history_size
        #: The bounds of every group's log; `configure` overrides them for one group.
        self.log_bounds = log if log is not None else Bounds()
        self.pace_high_water = pace_high_water
        self.pace_timeout = pace_timeout
        self.origin = uuid.uuid4().hex
        self.stats = ChannelStats()
        self._registry = Registry()
        self._overrides: dict[str, Bounds] = {}
        self._ids = itertools.count(1)
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._listener: asyncio.Task[None] | None = None
        self._publish_down = False
        self._sequences = _Sequences()
        # Groups being set up (subscribed, their log's position read): joins wait.
        self._opening: dict[str, asyncio.Future[Group]] = {}
        # Announcements that came before the ones they follow, by group, by offset.
        self._pending: dict[Group, dict[int, tuple[Position, PayloadKind, str, bytes]]] = {}
        self._filling: set[Group] = set()
        self._opening_pending: dict[str, dict[int, tuple[Position, PayloadKind, str, bytes]]] = {}
        # Publishes of this process waiting for their message's fan-out here (by id).
        self._own: dict[str, asyncio.Future[int]] = {}
        # Those of them appended to a copy and not yet fanned out.
        self._appended_own: list[str] = []
        self._unlogged: OrderedDict[str, None] = OrderedDict()
        # Publishes with ``exclude``, by message id, until their offset is known.
        self._excluding: dict[str, Member] = {}
        self._outage_start: tuple[float, int, int, int] = (0.0, 0, 0, 0)
        self._missed_logged: float | None = None
        self._slice_start = 0.0

    # ------------------------------------------------------------------ life

    @property
    def healthy(self) -> bool:
        """Whether messages reach the other processes now (always True on memory://)."""
        return self.broker.healthy

    async def start(self) -> None:
        """Connect the broker and start listening (the app does it at startup)."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            await self.broker.start()
            self._listener = asyncio.get_running_loop().create_task(self._listen())
            await asyncio.sleep(0)
            await self.broker.subscribe(_DIRECT)
            self.broker.on_resubscribed = self._resubscribed
            self._started = True
            global _current
            _current = self

    async def stop(self) -> None:
        """Stop every writer, stop listening and disconnect the broker."""
        for member in list(self._registry.members.values()):
            self._stop_writer(member)
            self._registry.remove_member(member)
        self._registry.groups.clear()
        for waiting in self._own.values():
            if not waiting.done():
                waiting.set_result(0)
        if not self._started:
            return
        self._started = False
        global _current
        if _current is self:
            _current = None
        await self.broker.stop()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _listen(self) -> None:
        async for channel, data in self.broker.listen():
            self._slice_begin()
            try:
                await self._on_remote(channel, data)
            except Exception:
                logger.exception("Bad message on broker channel %r (%d bytes)", channel, len(data))
            await self._yield_if_busy()

    # ------------------------------------------------------------------ slices

    def _slice_begin(self) -> None:
        """Note when fan-out work began, unless it began earlier in this turn of the loop."""
        if not self._slice_start:
            self._slice_start = time.perf_counter()
            asyncio.get_running_loop().call_soon(self._slice_over)

    def _slice_over(self) -> None:
        self._slice_start = 0.0

    async def _yield_if_busy(self) -> None:
        """Let the event loop run if fan-out has held it longer than SLICE."""
        if time.perf_counter() - self._slice_start > SLICE:
            await asyncio.sleep(0)
            self._slice_begin()

    # ------------------------------------------------------------------ configuration

    def configure(
        self,
        group: str,
        *,
        max_count: int | None = _UNSET,
        max_bytes: int | None = _UNSET,
        max_age: float | None = _UNSET,
    ) -> Bounds:
        """Override the log bounds of one group (the others follow ``log_bounds``); with
        no bound given, drop its overrides. Returns the group's bounds."""
        given: dict[str, Any] = {
            name: value
            for name, value in (
                ("max_count", max_count),
                ("max_bytes", max_bytes),
                ("max_age", max_age),
            )
            if value is not _UNSET
        }
        bounds = self.log_bounds.replace(**given)
        if given:
            self._overrides[group] = bounds
        else:
            self._overrides.pop(group, None)
        opened = self._registry.groups.get(group)
        if opened is not None and opened.log.bounds != bounds:
            opened.log.bounds = bounds
        return bounds

    def bounds(self, group: str) -> Bounds:
        """The bounds of ``group``'s log."""
        return self._overrides.get(group, self.log_bounds)

    # ------------------------------------------------------------------ members

    async def register(
        self,
        ws: Sink,
        groups: Iterable[str] = (),
        *,
        outbox_size: int | None = None,
        slow_consumer: SlowConsumerPolicy | None = None,
        held: bool = False,
    ) -> Member:
        """Make a connection reachable: by its id, and in ``groups``.

        ``held``: the connection is being accepted; messages wait until
        ``member.release()``... through `release`, so that no message precedes the accept.
        """
        await self.start()
        member = self._registry.members.get(ws)
        if member is None:
            member = Member(
                ws,
                maxsize=outbox_size or self.outbox_size,
                policy=slow_consumer or self.slow_consumer,
                held=held,
            )
            member.on_release = partial(self._release, member)
            self._registry.add_member(member)
        for group in groups:
            await self._join(member, group, envelope=False, since=None)
        return member

    def _release(self, member: Member) -> None:
        """Start sending (the connection is accepted)."""
        member.held = False
        if not member.closed:
            for group in list(member.behind):
                Registry.caught_up(member, group)
            if member.waiting:
                self._wake(member)

    async def unregister(self, ws: Sink) -> None:
        """The connection is gone: leave every group, drop what waits. O(its groups)."""
        member = self._registry.members.get(ws)
        if member is None:
            return
        self._stop_writer(member)
        for group in self._registry.remove_member(member):
            await self._close_group(group)

    async def join(
        self,
        ws: Sink,
        group: str,
        *,
        encoding: Encoding = "auto",
        since: object = None,
        envelope: bool = False,
    ) -> Joined:
        """Add an accepted connection to ``group`` (in every process sharing the broker).

        ``since``: the last position the client saw (a `Position`, its dict or string
        form): every message after it is sent first, then live ones, with no gap and no
        duplicate; see `Joined`. ``envelope``: send this group's messages as
        ``{"group", "epoch", "offset", "data"}`` JSON text (see ``fanout``).
        """
        position = None if since is None else Position.parse(since)
        member = self._registry.members.get(ws)
        if member is None:
            if not getattr(ws, "was_accepted", True):
                raise WebSocketStateError(
                    f'Cannot join {group!r}: call "await ws.accept()" first (a connection '
                    "joins groups once it is accepted)."
                )
            member = await self.register(ws)
        if encoding != "auto":
            member.encoding = encoding
        return await self._join(member, group, envelope=envelope, since=position)

    async def leave(self, ws: Sink, group: str) -> None:
        member = self._registry.members.get(ws)
        opened = self._registry.groups.get(group)
        if (
            member is not None
            and opened is not None
            and opened in member.groups
            and self._registry.leave(member, opened)
        ):
            await self._close_group(opened)

    async def _open(self, name: str) -> Group:
        """The group, set up on first use: subscribed, with its log (or a copy of it)."""
        group = self._registry.groups.get(name)
        if group is not None:
            return group
        opening = self._opening.get(name)
        if opening is not None:
            return await asyncio.shield(opening)
        future: asyncio.Future[Group] = asyncio.get_running_loop().create_future()
        self._opening[name] = future
        try:
            channel = _GROUP + name
            local = self.broker.local_log(channel) if self.broker.logs else None
            await self.broker.subscribe(channel)
            if local is not None:
                log = local
            else:
                log = await self._copy_of_log(channel, name)
            group = Group(name, log)
            self._registry.groups[name] = group
            future.set_result(group)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a join that waits re-raises it
            raise
        finally:
            del self._opening[name]
        pending = self._opening_pending.pop(name, None)
        if pending:  # announcements that came while the log's position was read
            for announced in sorted(pending.values(), key=lambda a: a[0].offset):
                await self._announced(group, *announced)
        return group

    async def _copy_of_log(self, channel: str, name: str) -> GroupLog:
        """This process's copy of a remote log, from its top on (what follows arrives
        in announcements): empty, at the broker's epoch and top."""
        if not self.broker.logs:
            return GroupLog("local", self.bounds(name))
        try:
            read = await self.broker.read(channel, MAX_OFFSET, 0)
        except (BrokerUnavailable, OSError) as exc:
            # Delivery goes on without positions until an announcement gives one.
            logger.warning(
                "Could not read the log of %r (%s): joined without a position", name, exc
            )
            return GroupLog(_UNKNOWN_EPOCH, self.bounds(name))
        return GroupLog(read.epoch, self.bounds(name), start=read.top)

    async def _close_group(self, group: Group) -> None:
        """The last local member left: stop receiving the group's messages."""
        self._pending.pop(group, None)
        await self.broker.unsubscribe(_GROUP + group.name)

    async def _join(
        self, member: Member, name: str, *, envelope: bool, since: Position | None
    ) -> Joined:
        group = await self._open(name)
        if member.closed:
            raise WebSocketStateError("Cannot join a group: the connection is closed.")
        if self._registry.groups.get(name) is not group:  # emptied while opening
            self._registry.groups[name] = group
        await self._catch_up(group)  # a shared in-process log may be ahead of the fan-out
        log = group.log
        if since is None:
            self._registry.join(member, group, envelope=envelope, cursor=None)
            self._after_join(member, group)
            return Joined(True, log.top if log.epoch != _UNKNOWN_EPOCH else None)
        joined = await self._recover(member, group, envelope, since)
        if joined.recovered:
            self.stats.recovered += 1
        else:
            self.stats.recovery_failed += 1
            logger.info(
                "WebSocket %s joined %r at %s and could not recover from %s (%s): it "
                "gets messages from now on",
                member.id,
                name,
                joined.position,
                since,
                joined.reason,
            )
        self._after_join(member, group)
        return joined

    def _after_join(self, member: Member, group: Group) -> None:
        if group in member.behind and not member.held:
            self._wake(member)

    async def _recover(
        self, member: Member, group: Group, envelope: bool, since: Position
    ) -> Joined:
        log = group.log
        answer = log.since(since, time.monotonic())
        if answer.recovered:
            self._registry.join(member, group, envelope=envelope, cursor=since.offset)
            return Joined(True, log.top, len(answer.entries))
        if answer.reason != "trimmed" or self.broker.local_log(_GROUP + group.name) is not None:
            self._registry.join(member, group, envelope=envelope, cursor=None)
            return Joined(False, log.top, reason=answer.reason)
        # This process's copy does not reach back: the broker's log may.
        first = log.first
        try:
            read = await self.broker.read(
                _GROUP + group.name, since.offset, first - 1 - since.offset
            )
        except (BrokerUnavailable, OSError):
            self._registry.join(member, group, envelope=envelope, cursor=None)
            return Joined(False, group.log.top, reason="unavailable")
        entries = read.entries
        if (
            read.epoch != since.epoch
            or group.log is not log
            or len(entries) != first - 1 - since.offset
            or (entries and entries[0].offset != since.offset + 1)
        ):
            self._registry.join(member, group, envelope=envelope, cursor=None)
            reason = "epoch" if read.epoch != since.epoch else "trimmed"
            return Joined(False, group.log.top, reason=reason)
        # The older part from the broker, the rest from the copy: contiguous.
        self._registry.join(member, group, envelope=envelope, cursor=first - 1)
        if group.live.pop(member, None) is not None:  # at the top, yet it has a past to get
            group.behind[member] = first - 1
            member.behind[group] = None
        member.replay[group] = deque((e.offset, e.kind, e.body) for e in entries)
        return Joined(True, group.log.top, len(entries) + group.delivered - (first - 1))

    # ------------------------------------------------------------------ writers

    def _wake(self, member: Member) -> None:
        """Start the member's writer if it has none (it sends what waits, in order)."""
        if member.writer is None and not member.held and not member.closed:
            member.writer = asyncio.get_running_loop().create_task(self._write(member))

    def _stop_writer(self, member: Member) -> None:
        writer, member.writer = member.writer, None
        if writer is not None and not writer.done() and writer is not asyncio.current_task():
            writer.cancel()

    async def _write(self, member: Member) -> None:
        """Send what waits for ``member``: its direct messages, then for each group it
        is behind in, the log's entries after its cursor; make it live again there once
        it reaches the top. Ends when nothing waits (the next stuck write starts it)."""
        send = member.sink.send
        try:
            while not member.closed:
                direct = member.direct
                if direct:
                    message, barriers = direct[0]
                    blocking = _blocking(member, barriers)
                    if blocking is None:
                        direct.popleft()
                        await send(message)
                        continue
                    # Group messages that came before it go first.
                    await self._write_group(member, blocking[0], send, blocking[1])
                    continue
                if not member.behind:
                    return
                group = next(iter(member.behind))
                await self._write_group(member, group, send, MAX_OFFSET)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The peer went away (uvicorn: ClientDisconnected) or the app closed it.
            self._gone(member)
        finally:
            if member.writer is asyncio.current_task():
                member.writer = None

    async def _write_group(self, member: Member, group: Group, send: Any, upto: int) -> None:
        cursor = group.behind.get(member)
        if cursor is None:  # left meanwhile
            member.behind.pop(group, None)
            return
        replay = member.replay.get(group)
        if replay:
            offset, kind, body = replay.popleft()
            if not replay:
                del member.replay[group]
            await send(message_for(member, group, offset, kind, body))
            self.stats.delivered += 1
            self._progress(group)
            return
        if Registry.caught_up(member, group):
            self._caught_up(member, group)
            return
        log = group.log
        entries = log.after(cursor, min(_WRITE_BATCH, min(upto, group.delivered) - cursor))
        if entries is None:
            self._fell_off(member, group, cursor)
            return
        skip = group.skip
        for entry in entries:
            if not skip or not _skips(skip.get(entry.offset), member):
                member.inflight = (group, entry.offset)
                try:
                    await send(message_for(member, group, entry.offset, entry.kind, entry.body))
                finally:
                    member.inflight = None
                self.stats.delivered += 1
            if group.behind.get(member) != cursor or group.log is not log:
                return  # skipped, left or rejoined meanwhile: look again
            cursor = group.behind[member] = entry.offset
        if member.pace_since is not None and group.delivered - cursor <= (
            self._high_water(log) // 2
        ):
            member.pace_since = None  # back under the low-water mark: the episode is over
        self._progress(group)

    def _caught_up(self, member: Member, group: Group) -> None:
        if member.slow:
            logger.info(
                "WebSocket %s caught up with %r: it paces publishers again", member.id, group.name
            )
        member.slow = False
        member.pace_since = None
        self._progress(group)

    def _progress(self, group: Group) -> None:
        """A behind member moved: wake a publisher waiting for it."""
        waiting = group.progress
        if waiting is not None:
            group.progress = None
            if not waiting.done():
                waiting.set_result(None)

    def _gone(self, member: Member) -> None:
        """The connection cannot be sent to: stop fanning out to it now (its groups are
        left for real when its handler ends: `unregister`)."""
        member.closed = True
        member.direct.clear()
        for group in list(member.groups):
            group.live.pop(member, None)
            group.behind.pop(member, None)
        member.behind.clear()

    def _fell_off(self, member: Member, group: Group, cursor: int) -> None:
        """``member``'s next entry in ``group`` is gone from the log: its policy."""
        log = group.log
        # A cursor beyond the top is another epoch's (the log was replaced): nothing known.
        missed = 0 if cursor > log.top.offset else max(0, log.first - 1 - cursor)
        if member.policy == "close":
            self.stats.closed_slow += 1
            self.stats.skipped += missed
            member.missed += missed
            logger.warning(
                "WebSocket %s fell behind the log of %r (it had %d message(s) still to "
                "get when the log dropped them); closing it with %d, policy 'close'.",
                member.id,
                group.name,
                missed,
                SLOW_CONSUMER_CLOSE[0],
            )
            self._stop_writer(member)
            self._gone(member)
            spawn(self._close_slow(member))
            return
        # "skip": on to the newest entry; the member learns how many it missed.
        top = log.top.offset
        target = max(top - 1, log.first - 1)
        missed = max(0, target - cursor) if cursor <= top else 0
        if member.inflight == (group, cursor + 1) and missed:
            missed -= 1  # being sent right now: it arrives
        group.behind[member] = target
        member.missed += missed
        self.stats.skipped += missed
        if member.missed == missed:  # once per connection
            logger.warning(
                "WebSocket %s fell behind the log of %r: skipped %d message(s) to the "
                "newest (policy 'skip'); stats.skipped counts them.",
                member.id,
                group.name,
                missed,
            )
        if member.groups.get(group, False):
            self._notice(member, group, target, missed)
        self._wake(member)

    def _notice(self, member: Member, group: Group, target: int, missed: int) -> None:
        """Tell an enveloped member that skipped to ``target`` how many it missed, before
        the group's next message. A notice of the group still waiting (the member skipped
        again before it read it) becomes one for both stretches: a second notice put in
        front of it would come first, and the offsets the client sees would go back."""
        mark = ((group, _NOTICE),)
        direct = member.direct
        epoch = group.log.epoch
        for i, (message, barriers) in enumerate(direct):
            if barriers == mark:
                missed += orjson.loads(message["text"])["missed"]
                direct[i] = (skip_notice(group.name, epoch, target, missed), mark)
                return
        direct.appendleft((skip_notice(group.name, epoch, target, missed), mark))

    async def _close_slow(self, member: Member) -> None:
        try:
            await member.sink.close(*SLOW_CONSUMER_CLOSE)
        except Exception:  # the peer is gone too; keepalive reaps the socket
            logger.debug("Could not close slow WebSocket %s", member.id, exc_info=True)

    # ------------------------------------------------------------------ fan-out

    async def _catch_up(self, group: Group) -> int:
        """Fan out every entry of the group's log after ``delivered``, in order; return
        how many members the last one reaches: written at once, or waiting in the log for
        a member that is behind. One fan-out per group at a time: a publish during one
        (it let the loop run) leaves its entry to it."""
        if group.fanning:
            return 0
        log = group.log
        reached = 0
        while group.delivered < log.top.offset:
            offset = group.delivered + 1
            entry = log.entry(offset)
            if entry is None:  # dropped before it was fanned out here
                self._lost(group, log.first - offset, offset)
                continue
            group.delivered = offset
            skipped = group.skip.get(offset) if group.skip else None
            if skipped is _EVERYONE:
                reached = 0
                continue
            live = group.live
            reached = len(live) + len(group.behind) - (skipped is not None)
            if len(live) <= _CHUNK:
                sent, stuck = deliver(group, live, offset, entry.kind, entry.body, skipped)
                if stuck:
                    put_behind(group, stuck, offset - 1)
                    for member in stuck:
                        self._wake(member)
            else:
                sent = await self._deliver_sliced(group, offset, entry.kind, entry.body)
            self.stats.delivered += sent
        if log.first != group.first_seen:
            group.first_seen = log.first
            if group.skip:
                for gone in [o for o in group.skip if o < log.first]:
                    del group.skip[gone]
            for member in Registry.fallen_off(group):
                self._fell_off(member, group, group.behind[member])
        return reached

    async def _deliver_sliced(
        self, group: Group, offset: int, kind: PayloadKind, body: bytes
    ) -> int:
        """`deliver` in chunks for a large group, letting the loop run between them."""
        group.fanning = True
        try:
            members = list(group.live)  # a snapshot: the loop may run between chunks
            sent = 0
            for start in range(0, len(members), _CHUNK):
                if start:
                    await self._yield_if_busy()
                chunk = members[start : start + _CHUNK]
                got, stuck = deliver(group, chunk, offset, kind, body, group.skip.get(offset))
                sent += got
                if stuck:
                    put_behind(group, stuck, offset - 1)
                    for member in stuck:
                        self._wake(member)
            return sent
        finally:
            group.fanning = False

    def _lost(self, group: Group, count: int, offset: int) -> None:
        """Entries from ``offset`` on (``count`` of them) will never be fanned out here."""
        group.delivered = offset + count - 1
        for member in group.live:
            member.missed += count
        self.stats.skipped += count * len(group.live)
        self.stats.missed_remote += count
        self._log_missed(_GROUP + group.name, count)

    async def _pace(self, group: Group) -> None:
        """Wait while members that read are far behind in ``group`` (see the module).

        An episode begins when a member is more than the high-water mark behind and ends
        when it is back to half of it: a publisher waits for that (not just for the mark),
        else a member that reads, slower than a publisher that floods, would hover at the
        mark in one endless episode, and be taken for slow after ``pace_timeout``. Every
        member over the mark starts its clock when a publisher first waits for it, all of
        them at once: however many stall together, a publisher waits about
        ``pace_timeout`` for them, not that much per member."""
        loop = asyncio.get_running_loop()
        paced = False
        while group.behind:
            limit = self._high_water(group.log)
            low = limit // 2
            delivered = group.delivered
            lagging = []
            for member, cursor in group.behind.items():
                lag = delivered - cursor
                if member.pace_since is not None and lag <= low:
                    member.pace_since = None  # the episode is over
                over = limit if member.pace_since is None else low
                if lag > over and not member.slow and not member.held:
                    lagging.append(member)
            if not lagging:
                return
            now = loop.time()
            deadline = None
            for member in lagging:
                if member.pace_since is None:
                    member.pace_since = now
                elif member.pace_since + self.pace_timeout <= now:
                    self._too_slow(member, group)
                    continue
                until = member.pace_since + self.pace_timeout
                deadline = until if deadline is None else min(deadline, until)
            if deadline is None:
                continue  # every one of them was too slow: look again
            if not paced:
                paced = True
                self.stats.paced += 1
            if group.progress is None:
                group.progress = loop.create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(group.progress)

    def _too_slow(self, member: Member, group: Group) -> None:
        """``member`` held publishers back for ``pace_timeout``: it paces nobody now."""
        member.slow = True
        member.pace_since = None
        self.stats.slow += 1
        logger.warning(
            "WebSocket %s has held publishers to %r back for %.2f s: it no longer "
            "paces them until it catches up (stats.slow)",
            member.id,
            group.name,
            self.pace_timeout,
        )

    def _high_water(self, log: GroupLog) -> int:
        """How far behind a member may be before it paces publishers: the high-water
        mark, and at most half of what the log holds at its bounds."""
        bounds = log.bounds
        room = bounds.max_count or MAX_OFFSET
        if bounds.max_bytes is not None and len(log):
            average = max(1, log.nbytes // len(log))
            room = min(room, bounds.max_bytes // average)
        return max(1, min(self.pace_high_water, room // 2))

    # ------------------------------------------------------------------ sending

    async def publish(
        self,
        group: str,
        payload: Any,
        *,
        exclude: Sink | None = None,
        save_history: bool = False,
    ) -> Published:
        """Send ``payload`` to every member of ``group``, in every process.

        ``str`` goes as a text message, ``bytes`` as binary, anything else as JSON
        (encoded once). It is appended to the group's log first (``save_history`` is
        kept for its name: every message is logged). Returns a `Published`: the number
        of local members it was written to at once, and its ``position``. Waits while a
        local member that reads is far behind (see ``pace_timeout``).
        """
        await self.start()
        kind, body = _encode(payload)
        self.stats.published += 1
        self._slice_begin()
        channel = _GROUP + group
        opened = self._registry.groups.get(group)
        local = self.broker.local_log(channel) if self.broker.logs else None
        if local is not None:
            # In-process log: append, announce to the other layers of the hub, fan out.
            position = await self.broker.append(channel, kind, body, "", self.bounds(group))
            sent = 0
            if opened is not None:
                if opened.log is not local:  # forgotten meanwhile (clear_history)
                    self._replace_log(opened, local)
                excluded = self._registry.members.get(exclude) if exclude is not None else None
                if excluded is not None and opened in excluded.groups:
                    opened.skip[position.offset] = excluded
                sent = await self._catch_up(opened)
                if opened.behind:
                    await self._pace(opened)
            await self._yield_if_busy()
            return Published(sent, position)
        published = await self._publish_remote_log(group, opened, kind, body, exclude)
        await self._yield_if_busy()
        return published

    async def _publish_remote_log(
        self,
        name: str,
        group: Group | None,
        kind: PayloadKind,
        body: bytes,
        exclude: Sink | None,
    ) -> Published:
        """Append to the broker's log; this process's members get it in offset order,
        with what the other processes published (`_announced`)."""
        msg_id = f"{self.origin}:{next(self._ids)}"
        waiting: asyncio.Future[int] | None = None
        if group is not None:
            waiting = self._own[msg_id] = asyncio.get_running_loop().create_future()
            excluded = self._registry.members.get(exclude) if exclude is not None else None
            if excluded is not None:
                self._excluding[msg_id] = excluded
        stats = self.stats
        try:
            position = await self.broker.append(
                _GROUP + name, kind, body, msg_id, self.bounds(name)
            )
        except (
            BrokerRefused,
            BrokerOutcomeUnknown,
            BrokerUnavailable,
            OSError,
            NotImplementedError,
        ) as exc:
            self._own.pop(msg_id, None)
            self._excluding.pop(msg_id, None)
            if isinstance(exc, NotImplementedError):
                return await self._publish_unlogged(name, group, kind, body, exclude, msg_id, exc)
            self._outage(exc)
            if isinstance(exc, BrokerOutcomeUnknown):
                stats.publish_unknown += 1
                self._remember_unlogged(msg_id)
            else:
                stats.publish_failed += 1
                if isinstance(exc, BrokerRefused):
                    stats.publish_refused += 1
            return await self._publish_unlogged(name, group, kind, body, exclude, msg_id, None)
        stats.published_remote += 1
        if self._publish_down:
            self._outage_over()
        if group is None or waiting is None:
            return Published(0, position)
        if not waiting.done():
            await self._announced(group, position, kind, msg_id, body)
        try:
            if not waiting.done():
                async with asyncio.timeout(_OWN_WAIT):
                    await waiting
            sent = waiting.result()
        except TimeoutError:
            sent = 0
        finally:
            self._own.pop(msg_id, None)
            self._excluding.pop(msg_id, None)
        if group.behind:
            await self._pace(group)
        return Published(sent, position)

    async def _publish_unlogged(
        self,
        name: str,
        group: Group | None,
        kind: PayloadKind,
        body: bytes,
        exclude: Sink | None,
        msg_id: str,
        error: BaseException | None,
    ) -> Published:
        """The broker could not log the message: local members still get it, with no
        position (it is in no log: nobody can recover it)."""
        if group is None:
            return Published(0, None)
        sent = 0
        for member in [*group.live, *group.behind]:
            if member.sink is exclude:
                continue
            message = message_for(member, group, None, kind, body)
            if self._push_direct(member, message, None):
                sent += 1
        return Published(sent, None)

    def _remember_unlogged(self, msg_id: str) -> None:
        self._unlogged[msg_id] = None
        if len(self._unlogged) > _UNLOGGED_IDS:
            self._unlogged.popitem(last=False)

    def _push_direct(self, member: Member, message: Message, frame: bytes | None) -> bool:
        """A message outside the logs: now if nothing waits and the socket takes it,
        else queued (bounded by ``outbox_size``: past it the oldest is dropped)."""
        if member.closed:
            return False
        if not member.waiting and member.sink.send_nowait(message, frame):
            return True
        if len(member.direct) >= member.maxsize:
            _drop_oldest_message(member.direct)
            member.dropped += 1
            self.stats.dropped += 1
            if member.dropped == 1:
                logger.warning(
                    "WebSocket %s reads too slowly: %d messages sent to it by id wait; "
                    "dropping the oldest from now on (stats.dropped counts them).",
                    member.id,
                    member.maxsize,
                )
        # After the group messages that came before it (to a member behind in a group).
        barriers = tuple((group, group.delivered) for group in member.behind)
        member.direct.append((message, barriers))
        self._wake(member)
        return True

    async def send_to(self, ids: Iterable[str], payload: Any) -> int:
        """Send ``payload`` to the connections whose ``ws.id`` is in ``ids``, wherever."""
        await self.start()
        targets = list(dict.fromkeys(str(i) for i in ids))
        kind, body = _encode(payload)
        self.stats.published += 1
        self._slice_begin()
        delivered = self._deliver_ids(targets, kind, body)
        if self.broker.shared:
            await self._publish_direct(_DIRECT, {"k": kind, "i": targets}, body)
        await self._yield_if_busy()
        return delivered

    def _deliver_ids(self, ids: list[str], kind: str, body: bytes) -> int:
        by_id = self._registry.by_id
        forms: dict[str, tuple[Message, bytes]] = {}
        sent = 0
        for member in [m for i in ids for m in list(by_id.get(i, ()))]:
            shaped = forms.get(member.encoding)
            if shaped is None:
                shaped = forms[member.encoding] = form(kind, body, member.encoding)
            if self._push_direct(member, shaped[0], shaped[1]):
                sent += 1
        self.stats.delivered += sent
        return sent

    async def _publish_direct(self, channel: str, header: dict[str, Any], body: bytes) -> None:
        header["o"] = self.origin
        header["s"] = self._sequences.stamp(channel)
        data = orjson.dumps(header) + b"\n" + body
        stats = self.stats
        try:
            await self.broker.publish(channel, data)
        except BrokerRefused as exc:
            self._outage(exc)
            stats.publish_failed += 1
            stats.publish_refused += 1
        except BrokerOutcomeUnknown as exc:
            self._outage(exc)
            stats.publish_unknown += 1
        except (BrokerUnavailable, OSError) as exc:
            self._outage(exc)
            stats.publish_failed += 1
        else:
            stats.published_remote += 1
            if self._publish_down:
                self._outage_over()

    def _outage(self, exc: BaseException) -> None:
        """A message did not surely reach the broker (called before it is counted)."""
        if self._publish_down:
            return
        self._publish_down = True
        stats = self.stats
        self._outage_start = (
            time.monotonic(),
            stats.publish_failed,
            stats.publish_refused,
            stats.publish_unknown,
        )
        logger.warning(
            "Broker unavailable (%s): messages reach this process's members only, "
            "without a position, until it is back.",
            exc,
        )

    def _outage_over(self) -> None:
        self._publish_down = False
        began, failed, refused, unknown = self._outage_start
        stats = self.stats
        lost = stats.publish_failed - failed, stats.publish_unknown - unknown
        logger.log(
            logging.WARNING if any(lost) else logging.INFO,
            "Broker available again after %.1f s: messages reach every process. Meanwhile "
            "%d message(s) did not reach the other processes (%d refused at once while "
            "it was known down), and %d were sent without a reply (they may or may not "
            "have reached them).",
            time.monotonic() - began,
            lost[0],
            stats.publish_refused - refused,
            lost[1],
        )

    # ------------------------------------------------------------------ from other processes

    async def _on_remote(self, channel: str, data: bytes) -> None:
        if channel == _DIRECT:
            head, _, body = data.partition(b"\n")
            header = orjson.loads(head)
            origin = header.get("o")
            if origin == self.origin:
                return
            self.stats.received_remote += 1
            n = header.get("s")
            if n is not None:
                missed = self._sequences.missed(origin, channel, n)
                if missed:
                    self.stats.missed_remote = max(0, self.stats.missed_remote + missed)
                    if missed > 0:
                        self._log_missed(channel, missed)
            self._deliver_ids(header["i"], header["k"], body)
            return
        if not channel.startswith(_GROUP):
            return
        name = channel[len(_GROUP) :]
        position, kind, msg_id, body = parse_announcement(data)
        group = self._registry.groups.get(name)
        if group is None:
            opening = self._opening.get(name)
            if opening is not None and not opening.done():
                # The group is being set up: keep it for when its log position is known.
                self._pending_for_opening(name, position, kind, msg_id, body)
            return
        await self._announced(group, position, kind, msg_id, body)

    def _pending_for_opening(
        self, name: str, position: Position, kind: PayloadKind, msg_id: str, body: bytes
    ) -> None:
        holder = self._opening_pending.setdefault(name, {})
        holder[position.offset] = (position, kind, msg_id, body)

    async def _announced(
        self, group: Group, position: Position, kind: PayloadKind, msg_id: str, body: bytes
    ) -> None:
        """A message of the group's stream, in whatever order it came: fan it out in
        offset order (waiting for the ones before it, or reading them from the log)."""
        log = group.log
        local = self.broker.local_log(_GROUP + group.name)
        if local is not None:
            # A log in this process: it has the entry; fan out up to it.
            self.stats.received_remote += 1
            if local is not log:
                self._replace_log(group, local)
            await self._fan_out_own(group, msg_id)
            return
        if position.epoch != log.epoch:
            self._new_epoch(group, position)
            log = group.log
        top = log.top.offset
        if position.offset <= top:
            return  # had it already (our own message, announced after we logged it)
        if position.offset > top + 1:
            pending = self._pending.setdefault(group, {})
            pending[position.offset] = (position, kind, msg_id, body)
            if group not in self._filling:
                self._filling.add(group)
                spawn(self._fill(group))
            return
        self._append(group, kind, body, msg_id)
        await self._fan_out_own(group, msg_id)
        pending = self._pending.get(group) or {}
        while pending:
            following = pending.pop(group.log.top.offset + 1, None)
            if following is None:
                break
            _, kind, msg_id, body = following
            self._append(group, kind, body, msg_id)
            await self._fan_out_own(group, msg_id)
        if not pending:
            self._pending.pop(group, None)

    def _append(self, group: Group, kind: PayloadKind, body: bytes, msg_id: str) -> None:
        """Add the next entry to this process's copy of a remote log."""
        group.log.append(kind, body, time.monotonic())
        if not msg_id.startswith(self.origin):
            self.stats.received_remote += 1
        elif msg_id in self._own:
            self._appended_own.append(msg_id)  # a publish here waits for its fan-out
        if msg_id in self._unlogged:
            # Delivered here when the broker did not answer; it was logged after all.
            del self._unlogged[msg_id]
            group.skip[group.log.top.offset] = _EVERYONE
        else:
            excluded = self._excluding.get(msg_id)
            if excluded is not None and group in excluded.groups:
                group.skip[group.log.top.offset] = excluded

    async def _fan_out_own(self, group: Group, msg_id: str = "") -> None:
        """Fan out what the copy holds; tell the publishes of this process waiting for
        theirs (``msg_id``, and any appended from a read of the log) how many it reached."""
        sent = await self._catch_up(group)
        ids = self._appended_own
        if msg_id:
            ids.append(msg_id)
        while ids:
            waiting = self._own.get(ids.pop())
            if waiting is not None and not waiting.done():
                waiting.set_result(sent)

    def _new_epoch(self, group: Group, position: Position) -> None:
        """The group's stream started over (the broker lost its past): a new copy from
        just before this announcement; what members had not got of the old one is lost."""
        old = group.log
        if old.epoch != _UNKNOWN_EPOCH:
            logger.warning(
                "The log of %r started over (epoch %s, was %s): its past is lost; "
                "members that were behind skip to the new stream",
                group.name,
                position.epoch,
                old.epoch,
            )
        self._replace_log(group, GroupLog(position.epoch, old.bounds, start=position.offset - 1))

    def _replace_log(self, group: Group, log: GroupLog) -> None:
        """The group's stream is now ``log`` (another epoch): members go on from its
        start; what they had not got of the old one is lost to them (counted)."""
        old = group.log
        group.log = log
        group.delivered = log.first - 1  # everything the new log holds is still to fan out
        group.first_seen = log.first
        self._pending.pop(group, None)
        group.skip.clear()
        for member, cursor in list(group.behind.items()):
            missed = max(0, old.top.offset - cursor)
            member.missed += missed
            self.stats.skipped += missed
            member.replay.pop(group, None)
            group.behind[member] = group.delivered

    async def _fill(self, group: Group) -> None:
        """Announcements are missing before some that came: wait a moment for them, then
        read them from the broker's log; what it no longer has is counted as lost."""
        try:
            await asyncio.sleep(_REORDER_WINDOW)
            while self._pending.get(group) and self._registry.groups.get(group.name) is group:
                pending = self._pending[group]
                log = group.log
                top = log.top.offset
                low = min(pending)
                if low == top + 1:
                    _, kind, msg_id, body = pending.pop(low)
                    self._append(group, kind, body, msg_id)
                    await self._fan_out_own(group, msg_id)
                    continue
                try:
                    read = await self.broker.read(_GROUP + group.name, top, low - 1 - top)
                except (BrokerUnavailable, OSError):
                    read = None
                if group.log is not log:
                    continue
                if read is not None and read.epoch == log.epoch:
                    await self._append_read(group, read.entries, below=low)
                if group.log.top.offset < low - 1:
                    # Gone from the log too (or unreadable): lost for the members here.
                    self._fill_lost(group, low)
        finally:
            self._filling.discard(group)

    def _fill_lost(self, group: Group, low: int) -> None:
        """The entries of the group's stream before ``low`` that this process's copy
        lacks will never come: the copy goes on from ``low``; members are counted as
        having missed them."""
        log = group.log
        missing = low - 1 - log.top.offset
        self._lost(group, missing, group.delivered + 1)
        fresh = GroupLog(log.epoch, log.bounds, start=low - 1)
        group.log = fresh
        group.delivered = fresh.top.offset
        group.first_seen = fresh.first
        for member in list(group.behind):
            missed = low - 1 - group.behind[member]
            member.missed += missed
            self.stats.skipped += missed
            group.behind[member] = low - 1
            member.replay.pop(group, None)

    async def _append_read(
        self, group: Group, entries: list[Logged], below: int = MAX_OFFSET
    ) -> int:
        """Add entries read from the broker's log to this process's copy, as far as they
        follow its top (and stay below ``below``); fan them out. Returns how many."""
        got = 0
        for entry in entries:
            if entry.offset != group.log.top.offset + 1 or entry.offset >= below:
                break
            self._append(group, entry.kind, entry.body, entry.id)
            got += 1
        if got:
            self.stats.gap_filled += got
            logger.info(
                "Read %d message(s) of %r back from the log: this process had not "
                "received them (stats.gap_filled)",
                got,
                group.name,
            )
            await self._fan_out_own(group)
        return got

    def _resubscribed(self) -> None:
        """The broker's subscriptions were down and are back: what was announced
        meanwhile never reached this process. Read each group's log for it now, rather
        than at the group's next message."""
        for group in list(self._registry.groups.values()):
            if self.broker.local_log(_GROUP + group.name) is None:
                spawn(self._resync(group))

    async def _resync(self, group: Group) -> None:
        channel = _GROUP + group.name
        delay = 0.05
        while True:
            log = group.log
            try:
                read = await self.broker.read(channel, log.top.offset)
                if read.epoch != log.epoch and read.top:  # the stream started over meanwhile
                    read = await self.broker.read(channel, read.first - 1)
                break
            except (BrokerUnavailable, OSError) as exc:
                # Its command connections may be as stale as its subscription was: retry
                # (the broker knows when it is down) until the group is gone here.
                logger.debug("Could not read the log of %r after reconnecting: %s", group.name, exc)
                if not self._started or self._registry.groups.get(group.name) is not group:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        if group.log is not log or self._registry.groups.get(group.name) is not group:
            return  # changed meanwhile: announcements are being handled
        if read.epoch != log.epoch:
            self._new_epoch(group, Position(read.epoch, read.first))
        elif read.first > log.top.offset + 1:  # what it missed is gone from the log too
            self._fill_lost(group, read.first)
        await self._append_read(group, read.entries)

    def _log_missed(self, channel: str, missed: int) -> None:
        now = time.monotonic()
        if self._missed_logged is not None and now - self._missed_logged < _MISSED_LOG_INTERVAL:
            return
        self._missed_logged = now
        logger.warning(
            "Missed %d message(s) published on %r (this process was not receiving "
            "from the broker, and the log no longer had them); %d missed in all "
            "(stats.missed_remote).",
            missed,
            channel,
            self.stats.missed_remote,
        )

    # ------------------------------------------------------------------ history

    async def history(self, group: str, count: int | None = None) -> list[dict[str, Any]]:
        """The group's logged messages, oldest first (the last ``count``, by default at
        most ``history_size``): ``{"id", "timestamp", "payload"}``, where ``id`` is the
        message's position in its short form and ``timestamp`` when this process
        logged or read it (Unix seconds)."""
        await self.start()
        if count is None:
            count = self.history_size
        if count <= 0:
            return []
        channel = _GROUP + group
        local = self.broker.local_log(channel) if self.broker.logs else None
        if local is not None:
            wall = time.time() - time.monotonic()
            local.trim(time.monotonic())
            return [
                {
                    "id": f"{e.offset}:{local.epoch}",
                    "timestamp": wall + e.time,
                    "payload": _decode(e.kind, e.body),
                }
                for e in list(local)[-count:]
            ]
        if not self.broker.logs:
            return []
        top = await self.broker.read(channel, MAX_OFFSET, 0)
        read = await self.broker.read(channel, max(top.first - 1, top.top - count), count)
        now = time.time()
        return [
            {"id": f"{e.offset}:{read.epoch}", "timestamp": now, "payload": _decode(e.kind, e.body)}
            for e in read.entries
        ]

    async def clear_history(self, group: str | None = None) -> None:
        """Forget the logs of ``group`` (of every group with None): their past is lost,
        the next message starts a new epoch."""
        await self.start()
        await self.broker.clear_history(None if group is None else _GROUP + group)

    # ------------------------------------------------------------------ views

    def groups(self) -> dict[str, int]:
        """Each group with local members, and how many."""
        return {name: len(group) for name, group in self._registry.groups.items() if len(group)}

    def members(self, group: str) -> list[Any]:
        """The local connections in ``group``."""
        opened = self._registry.groups.get(group)
        return [member.sink for member in opened.members()] if opened is not None else []

    def groups_of(self, ws: Sink) -> set[str]:
        member = self._registry.members.get(ws)
        return {group.name for group in member.groups} if member is not None else set()

    def member_of(self, ws: Sink) -> Member | None:
        """The connection's `Member`: its groups, what waits, what it missed."""
        return self._registry.members.get(ws)

    outbox_of = member_of  # the name of the earlier outbox

    async def flush_groups(self) -> None:
        """Empty every group in this process (connections stay open)."""
        for group in list(self._registry.groups.values()):
            for member in list(group.members()):
                if self._registry.leave(member, group):
                    await self._close_group(group)

    def __repr__(self) -> str:
        return (
            f"<ChannelLayer {type(self.broker).__name__} groups={len(self._registry.groups)} "
            f"members={len(self._registry.members)} healthy={self.healthy}>"
        )


# In `Group.skip`: an entry nobody here is to be sent (they had it already).
_EVERYONE: Any = object()


def _skips(skipped: object, member: Member) -> bool:
    """Whether an entry whose `Group.skip` value is ``skipped`` is not for ``member``."""
    return skipped is _EVERYONE or skipped is member


def _drop_oldest_message(direct: deque[tuple[Message, tuple[tuple[Group, int], ...]]]) -> None:
    """Drop the oldest message sent by id from a full queue; never a skip notice (the
    client would not learn about a stretch it missed)."""
    for i, (_, barriers) in enumerate(direct):
        if not (len(barriers) == 1 and barriers[0][1] == _NOTICE):
            del direct[i]
            return
    direct.popleft()


def _blocking(member: Member, barriers: tuple[tuple[Group, int], ...]) -> tuple[Group, int] | None:
    """The first group whose messages up to an offset must reach ``member`` before a
    direct message queued then; None when none must."""
    for group, offset in barriers:
        cursor = group.behind.get(member)
        if cursor is not None and cursor < offset and member.behind.get(group, 0) is None:
            return group, offset
    return None


# The epoch of a copy made while the broker's log could not be read: replaced by the
# first announcement's.
_UNKNOWN_EPOCH = "unknown"
