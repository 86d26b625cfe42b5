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

from nexios.channels.brokers.base import Broker, HistoryEntry

__all__ = ["MemoryBroker"]

# A subscriber that does not listen keeps at most this many messages.
_QUEUE_LIMIT = 10_000


class _Hub:
    """What the brokers of one ``memory://name`` share."""

    def __init__(self) -> None:
        self.subscribers: dict[str, set[MemoryBroker]] = {}
        self.histories: dict[str, deque[HistoryEntry]] = {}
        self.counter = itertools.count(1)


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
        if channel is None:
            self._hub.histories.clear()
        else:
            self._hub.histories.pop(channel, None)
