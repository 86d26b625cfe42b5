"""The in-process broker: the default, for one process.

Layers that share a ``MemoryBroker`` hub (the same ``memory://name`` URL in one process)
reach each other as separate processes would through Redis, which is how the contract
tests run the same suite on both. A single app on ``memory://`` never publishes: every
member is local, and the layer delivers to local members directly.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator

from nexios.channels.brokers.base import Broker, HistoryEntry, Logged, LogRead, announcement
from nexios.channels.log import Bounds, GroupLog, Logs, PayloadKind, Position

__all__ = ["MemoryBroker"]

# A subscriber that does not listen keeps at most this many messages.
_QUEUE_LIMIT = 10_000
# Seconds between two sweeps of the hub's idle logs (`Logs.sweep`).
_SWEEP_EVERY = 30.0


class _Hub:
    """What the brokers of one ``memory://name`` share."""

    def __init__(self) -> None:
        self.subscribers: dict[str, set[MemoryBroker]] = {}
        self.histories: dict[str, deque[HistoryEntry]] = {}
        self.counter = itertools.count(1)
        # Group logs; a log's epoch is new for each hub, so for each process start.
        self.logs = Logs()
        self.swept = time.monotonic()


_HUBS: dict[str, _Hub] = {}


class MemoryBroker(Broker):
    """An in-process broker; brokers created with the same ``name`` share messages."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._hub = _HUBS.setdefault(name, _Hub())
        self._channels: set[str] = set()
        self._queue: deque[tuple[str, bytes]] = deque(maxlen=_QUEUE_LIMIT)
        self._wakeup: asyncio.Event | None = None
        self._stopped = False
        self.dropped = 0

    @property
    def shared(self) -> bool:  # type: ignore[override]
        """True once another broker of the same hub has subscribed to something."""
        return any(
            broker is not self for brokers in self._hub.subscribers.values() for broker in brokers
        )

    async def start(self) -> None:
        self._stopped = False

    async def stop(self) -> None:
        self._stopped = True
        for channel in list(self._channels):
            await self.unsubscribe(channel)
        if self._wakeup is not None:
            self._wakeup.set()

    async def publish(self, channel: str, data: bytes) -> None:
        for broker in self._hub.subscribers.get(channel, ()):
            broker._deliver(channel, data)

    def _deliver(self, channel: str, data: bytes) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append((channel, data))
        if self._wakeup is not None:
            self._wakeup.set()

    # Logs: kept in the hub, so the layers of one process share them (`local_log`).

    logs = True

    async def append(
        self, channel: str, kind: PayloadKind, body: bytes, msg_id: str, bounds: Bounds
    ) -> Position:
        """Log and announce (at once: nothing in between can interleave). The
        announcement reaches the hub's other brokers, not this one: its layer has the
        message already."""
        hub = self._hub
        now = time.monotonic()
        if now - hub.swept > _SWEEP_EVERY:
            hub.swept = now
            hub.logs.sweep(now, keep=hub.subscribers)
        log = hub.logs.log(channel, now)
        if log.bounds != bounds:
            log.bounds = bounds
        position = log.append(kind, body, now)
        subscribers = hub.subscribers.get(channel)
        if subscribers and (len(subscribers) > 1 or self not in subscribers):
            data = announcement(position, kind, msg_id, body)
            for broker in subscribers:
                if broker is not self:
                    broker._deliver(channel, data)
        return position

    async def read(self, channel: str, after: int, limit: int | None = None) -> LogRead:
        log = self._hub.logs.log(channel, time.monotonic())
        log.trim(time.monotonic())
        entries = log.after(after, limit) or []
        return LogRead(
            log.epoch,
            log.top.offset,
            log.first,
            [Logged(e.offset, e.kind, e.body, "") for e in entries],
        )

    def local_log(self, channel: str) -> GroupLog | None:
        return self._hub.logs.log(channel, time.monotonic())

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        self._hub.subscribers.setdefault(channel, set()).add(self)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        subscribers = self._hub.subscribers.get(channel)
        if subscribers is not None:
            subscribers.discard(self)
            if not subscribers:
                del self._hub.subscribers[channel]

    async def listen(self) -> AsyncIterator[tuple[str, bytes]]:
        self._wakeup = asyncio.Event()
        while not self._stopped:
            while self._queue:
                yield self._queue.popleft()
            self._wakeup.clear()
            await self._wakeup.wait()

    async def add_history(self, channel: str, data: bytes, maxlen: int) -> HistoryEntry:
        entries = self._hub.histories.get(channel)
        if entries is None or entries.maxlen != maxlen:
            entries = self._hub.histories[channel] = deque(entries or (), maxlen=maxlen)
        now = time.time()
        entry = HistoryEntry(f"{int(now * 1000)}-{next(self._hub.counter)}", now, data)
        entries.append(entry)
        return entry

    async def history(self, channel: str, count: int | None = None) -> list[HistoryEntry]:
        entries = list(self._hub.histories.get(channel, ()))
        return entries if count is None else entries[-count:] if count > 0 else []

    async def clear_history(self, channel: str | None = None) -> None:
        """Forget the channel's history and log (every channel's with None): the next
        message starts a new epoch."""
        if channel is None:
            self._hub.histories.clear()
            for name in list(self._hub.logs._logs):
                self._hub.logs.forget(name)
        else:
            self._hub.histories.pop(channel, None)
            self._hub.logs.forget(channel)
