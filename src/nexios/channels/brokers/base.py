"""The broker interface: what moves bytes between processes.

A broker knows channels (strings) and payloads (bytes), nothing of WebSockets or
groups: the channel layer (``nexios.channels.layer``) owns those. Delivery is at most
once: a message published while a broker is disconnected is lost (and counted by the
layer); a subscriber that was disconnected misses what was published meanwhile.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass

__all__ = [
    "Broker",
    "BrokerOutcomeUnknown",
    "BrokerRefused",
    "BrokerUnavailable",
    "HistoryEntry",
]


class BrokerUnavailable(ConnectionError):
    """The broker cannot be reached right now; the layer logs it and goes on locally.

    Raised as such by `Broker.publish`, it means the message did not reach the broker:
    no other process gets it.
    """


class BrokerRefused(BrokerUnavailable):
    """Refused at once, without trying: the broker is known to be down (a recent command
    found it unreachable, and it has not answered since). Nothing was sent."""


class BrokerOutcomeUnknown(BrokerUnavailable):
    """The command was sent but no reply came in time (or the connection broke while
    waiting for it): the broker may have run it, now or once it resumes. A message
    published so may or may not reach the other processes."""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One saved message: its id (ordered), when it was saved (Unix seconds), its bytes."""

    id: str
    timestamp: float
    data: bytes


class Broker(abc.ABC):
    """Moves bytes between the processes that share it.

    ``publish`` reaches every process subscribed to the channel, the publisher's own
    included (the layer skips its own messages). ``listen`` yields ``(channel, data)``
    for the subscribed channels until ``stop``; it survives reconnections.
    """

    #: True when a message published now would reach the other processes.
    healthy: bool = True
    #: True when other processes may share this broker (the layer then publishes).
    shared: bool = True

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect. Called once, before anything else (the layer does it)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Disconnect and end ``listen``."""

    @abc.abstractmethod
    async def publish(self, channel: str, data: bytes) -> None:
        """Send ``data`` to the channel's subscribers.

        Raises `BrokerRefused` (nothing sent, at once: known down), `BrokerOutcomeUnknown`
        (sent, no reply) or `BrokerUnavailable` (not sent) when it cannot.
        """

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Receive the channel's messages from ``listen`` (kept across reconnections)."""

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving the channel's messages."""

    @abc.abstractmethod
    def listen(self) -> AsyncIterator[tuple[str, bytes]]:
        """``(channel, data)`` for each message on a subscribed channel, until stopped."""

    # History: what ``save_history=True`` keeps, shared by every process of the broker.

    @abc.abstractmethod
    async def add_history(self, channel: str, data: bytes, maxlen: int) -> HistoryEntry:
        """Keep ``data`` in the channel's history, which holds at most ``maxlen`` entries."""

    @abc.abstractmethod
    async def history(self, channel: str, count: int | None = None) -> list[HistoryEntry]:
        """The channel's saved entries, oldest first (the last ``count`` of them)."""

    @abc.abstractmethod
    async def clear_history(self, channel: str | None = None) -> None:
        """Forget the channel's history, or every channel's with None."""
