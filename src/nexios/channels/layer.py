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

Where things are: this module has the API (publish, join, send_to, history) and the
fan-out loop; ``registry`` who is where (sans-I/O); ``fanout`` the forms a message is
written in; ``writers`` how a member that is behind catches up, pacing and the
slow-consumer policy; ``copies`` this process's copies of remote (Redis) logs; ``log``
positions and the in-memory log; ``stats`` the counters; ``brokers`` memory and Redis.
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

from nexios.channels.brokers.base import (
    Broker,
    BrokerOutcomeUnknown,
    BrokerRefused,
    BrokerUnavailable,
    parse_announcement,
)
from nexios.channels.brokers.memory import MemoryBroker
from nexios.channels.copies import GROUP, UNKNOWN_EPOCH, Copies
from nexios.channels.fanout import deliver, form, message_for, put_behind
from nexios.channels.log import (
    MAX_OFFSET,
    UNSET,
    Bounds,
    GroupLog,
    PayloadKind,
    Position,
    given_bounds,
)
from nexios.channels.registry import (
    EVERYONE,
    Group,
    Member,
    Registry,
    Sink,
    SlowConsumerPolicy,
    policy_of,
)
from nexios.channels.stats import ChannelStats, Sequences
from nexios.channels.writers import (
    PACE_HIGH_WATER,
    PACE_TIMEOUT,
    Writers,
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

# The one broker channel for messages addressed by id (a group's is copies.GROUP + name).
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


# Seconds a publish waits for its own message to be fanned out here (gap filling).
_OWN_WAIT = 2.0
# Message ids published while the broker's outcome was unknown, remembered so that a
# late announcement of one is not delivered twice here.
_UNLOGGED_IDS = 4096


class ChannelLayer(Writers, Copies):
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
        self._sequences = Sequences()
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
        max_count: int | None = UNSET,
        max_bytes: int | None = UNSET,
        max_age: float | None = UNSET,
    ) -> Bounds:
        """Override the log bounds of one group (the others follow ``log_bounds``); with
        no bound given, drop its overrides. Returns the group's bounds."""
        given = given_bounds(max_count, max_bytes, max_age)
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
            channel = GROUP + name
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
            return GroupLog(UNKNOWN_EPOCH, self.bounds(name))
        return GroupLog(read.epoch, self.bounds(name), start=read.top)

    async def _close_group(self, group: Group) -> None:
        """The last local member left: stop receiving the group's messages."""
        self._pending.pop(group, None)
        await self.broker.unsubscribe(GROUP + group.name)

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
            return Joined(True, log.top if log.epoch != UNKNOWN_EPOCH else None)
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
        if answer.reason != "trimmed" or self.broker.local_log(GROUP + group.name) is not None:
            self._registry.join(member, group, envelope=envelope, cursor=None)
            return Joined(False, log.top, reason=answer.reason)
        # This process's copy does not reach back: the broker's log may.
        first = log.first
        try:
            read = await self.broker.read(
                GROUP + group.name, since.offset, first - 1 - since.offset
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
            if skipped is EVERYONE:
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
        self._log_missed(GROUP + group.name, count)

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
        channel = GROUP + group
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
            position = await self.broker.append(GROUP + name, kind, body, msg_id, self.bounds(name))
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
                return await self._publish_unlogged(group, kind, body, exclude)
            self._outage(exc)
            if isinstance(exc, BrokerOutcomeUnknown):
                stats.publish_unknown += 1
                self._remember_unlogged(msg_id)
            else:
                stats.publish_failed += 1
                if isinstance(exc, BrokerRefused):
                    stats.publish_refused += 1
            return await self._publish_unlogged(group, kind, body, exclude)
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
        group: Group | None,
        kind: PayloadKind,
        body: bytes,
        exclude: Sink | None,
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
        if not channel.startswith(GROUP):
            return
        name = channel[len(GROUP) :]
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
        channel = GROUP + group
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
        await self.broker.clear_history(None if group is None else GROUP + group)

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
