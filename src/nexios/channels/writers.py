"""Writers: how a member that is behind catches up, and how it paces publishers.

A member whose socket did not take a message at once is *behind* (``registry``): a
writer task of its own sends it the group's log entries after its cursor, with the
awaitable ``send``, as its socket drains, then makes it live again. The same task sends
what was addressed to the connection by id, in arrival order with the group messages
(a message by id waits for the group entries fanned out to the member before it).

A publisher waits (`Writers._pace`) while members that read are far behind, for at most
``pace_timeout``; a member that falls off the end of a log meets its slow-consumer
policy (`Writers._fell_off`). This is a mixin of `ChannelLayer`: the state it uses is
the layer's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson

from nexios._tasks import spawn
from nexios.channels.fanout import message_for, skip_notice
from nexios.channels.log import MAX_OFFSET, GroupLog
from nexios.channels.registry import Group, Member, Registry, skips
from nexios.types import Message

if TYPE_CHECKING:
    from nexios.channels.stats import ChannelStats

__all__ = ["PACE_HIGH_WATER", "PACE_TIMEOUT", "SLOW_CONSUMER_CLOSE", "Writers"]

logger = logging.getLogger("nexios.channels")

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
# The offset a skip notice waits for in a member's direct queue: none (it never blocks);
# it marks the notice, so that a later skip of the same group finds it.
_NOTICE = -1


class Writers:
    """The writers, pacing and slow-consumer policy of a `ChannelLayer` (a mixin)."""

    stats: ChannelStats
    pace_timeout: float
    pace_high_water: int
    _registry: Registry

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
            message = message_for(member, group, offset, kind, body)
            if not member.sink.send_nowait(message):
                await send(message)
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
        # Written at once while the socket takes it (no coroutine per message); the
        # awaitable send only once it is full, to wait for it to drain.
        nowait = member.sink.send_nowait
        waited = False
        for entry in entries:
            if not skip or not skips(skip.get(entry.offset), member):
                message = message_for(member, group, entry.offset, entry.kind, entry.body)
                if not nowait(message):
                    waited = True
                    member.inflight = (group, entry.offset)
                    try:
                        await send(message)
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
        if not waited:
            await asyncio.sleep(0)  # a batch that never waited: let the loop run

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
