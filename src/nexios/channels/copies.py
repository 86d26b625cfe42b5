"""This process's copies of remote logs (Redis): announcements in offset order, gaps
read back from the broker's log, a stream that starts over.

On a broker whose logs live elsewhere, each group with members here has a copy of its
log from the moment it was opened: announcements are appended in offset order (one that
comes early waits `_REORDER_WINDOW` for those before it, then they are read from the
broker); what the broker no longer has is counted missed; an announcement of another
epoch starts the copy over; after the broker's subscriptions come back, each copy is
compared with the broker's log (`Copies._resync`). Fan-out then reads the copy as it
reads a local log. A mixin of `ChannelLayer`: the state it uses is the layer's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from nexios._tasks import spawn
from nexios.channels.brokers.base import Broker, BrokerUnavailable, Logged
from nexios.channels.log import MAX_OFFSET, GroupLog, PayloadKind, Position
from nexios.channels.registry import EVERYONE, Group, Member, Registry

if TYPE_CHECKING:
    from nexios.channels.stats import ChannelStats

__all__ = ["GROUP", "UNKNOWN_EPOCH", "Copies"]

logger = logging.getLogger("nexios.channels")

#: A group's broker channel is this prefix and its name.
GROUP = "g:"

# Seconds an announcement waits for the ones before it before the gap is read from the
# broker's log.
_REORDER_WINDOW = 0.1
# A gap this process could not fill is logged at most once in this many seconds (the
# count goes on).
_MISSED_LOG_INTERVAL = 10.0
# The epoch of a copy made while the broker's log could not be read: replaced by the
# first announcement's.
UNKNOWN_EPOCH = "unknown"


class Copies:
    """Copies of remote logs for a `ChannelLayer` (a mixin)."""

    broker: Broker
    stats: ChannelStats
    origin: str
    _registry: Registry
    _started: bool
    _pending: dict[Group, dict[int, tuple[Position, PayloadKind, str, bytes]]]
    _filling: set[Group]
    _own: dict[str, asyncio.Future[int]]
    _appended_own: list[str]
    _unlogged: OrderedDict[str, None]
    _excluding: dict[str, Member]
    _missed_logged: float | None

    if TYPE_CHECKING:  # the layer's

        async def _catch_up(self, group: Group) -> int: ...

        def _lost(self, group: Group, count: int, offset: int) -> None: ...

    async def _announced(
        self, group: Group, position: Position, kind: PayloadKind, msg_id: str, body: bytes
    ) -> None:
        """A message of the group's stream, in whatever order it came: fan it out in
        offset order (waiting for the ones before it, or reading them from the log)."""
        log = group.log
        local = self.broker.local_log(GROUP + group.name)
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
            group.skip[group.log.top.offset] = EVERYONE
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
        if old.epoch != UNKNOWN_EPOCH:
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
                    read = await self.broker.read(GROUP + group.name, top, low - 1 - top)
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
            if self.broker.local_log(GROUP + group.name) is None:
                spawn(self._resync(group))

    async def _resync(self, group: Group) -> None:
        channel = GROUP + group.name
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
