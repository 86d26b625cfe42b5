"""The broker interface: what moves bytes between processes.

A broker knows channels (strings) and payloads (bytes), nothing of WebSockets or
groups: the channel layer (``nexios.channels.layer``) owns those. Delivery is at most
once: a message published while a broker is disconnected is lost (and counted by the
layer); a subscriber that was disconnected misses what was published meanwhile.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import NamedTuple

from nexios.channels.log import Bounds, GroupLog, PayloadKind, Position

__all__ = [
    "Announcement",
    "Broker",
    "BrokerOutcomeUnknown",
    "BrokerRefused",
    "BrokerUnavailable",
    "HistoryEntry",
    "LogRead",
    "Logged",
    "announcement",
    "parse_announcement",
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


class Logged(NamedTuple):
    """One entry of a group's log as a broker stores it: its offset, the payload as the
    layer encoded it (``kind``, ``body``), and ``id``, the publisher's message id (the
    layer uses it to recognise its own messages; opaque to the broker)."""

    offset: int
    kind: PayloadKind
    body: bytes
    id: str


@dataclass(frozen=True, slots=True)
class LogRead:
    """What `Broker.read` found in a channel's log: its ``epoch``, its last offset
    ``top`` (0 for a log with no message yet), the oldest offset it still holds
    ``first`` (``top + 1`` when it holds none), and the ``entries`` asked for, oldest
    first, contiguous."""

    epoch: str
    top: int
    first: int
    entries: list[Logged]


class Announcement(NamedTuple):
    """A logged message as subscribers receive it (see `announcement`)."""

    position: Position
    kind: PayloadKind
    id: str
    body: bytes


def announcement(position: Position, kind: PayloadKind, msg_id: str, body: bytes) -> bytes:
    """The bytes subscribers of a logged channel receive for one appended message:
    ``b"<offset>:<epoch>\\n<kind>\\n<id>\\n" + body``. Brokers that announce in a
    script build the same bytes there."""
    return f"{position.offset}:{position.epoch}\n{kind}\n{msg_id}\n".encode() + body


def parse_announcement(data: bytes) -> Announcement:
    """Read back `announcement`'s bytes; raises ValueError for anything else."""
    head, kind, msg_id, body = data.split(b"\n", 3)
    offset, _, epoch = head.decode().partition(":")
    kind_text = kind.decode()
    if kind_text not in ("json", "text", "bytes"):
        raise ValueError(f"unknown payload kind {kind_text!r} in an announcement")
    return Announcement(Position(epoch, int(offset)), kind_text, msg_id.decode(), body)  # type: ignore[arg-type]


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

    # Logs: each group channel's recent messages with their positions (issue 11). A
    # broker that keeps none leaves these as they are; the layer then delivers with no
    # positions and no resume.

    #: True when `append` and `read` work (the layer then logs every group message).
    logs: bool = False

    #: Called (by a broker whose subscriptions can break) once they are back after an
    #: outage: what was announced meanwhile was not received. The layer sets it.
    on_resubscribed: Callable[[], None] | None = None

    async def append(
        self, channel: str, kind: PayloadKind, body: bytes, msg_id: str, bounds: Bounds
    ) -> Position:
        """Append a message to ``channel``'s log and announce it to the channel's
        subscribers, as one atomic step: its offset is the log's top plus one, and
        subscribers receive announcements in offset order. The announcement is
        ``announcement(position, kind, msg_id, body)``, delivered through `listen` like
        any message (to this broker's own subscriptions too).

        The log keeps what ``bounds`` allow (count, bytes, age; oldest dropped first,
        the newest always kept). A log that does not exist (never written, expired,
        or lost with the broker's data) is created with a new epoch. Returns the new
        message's position. Raises like `publish`: `BrokerRefused`, `BrokerOutcomeUnknown`
        (it may have been appended and announced) or `BrokerUnavailable`.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no logs")

    async def read(self, channel: str, after: int, limit: int | None = None) -> LogRead:
        """The entries of ``channel``'s log after offset ``after`` (at most ``limit``,
        oldest first), with the log's epoch, top and first offset. A log that does not
        exist is created empty with a new epoch (so a reader always learns a position
        to come back with). When ``after`` is below ``first - 1`` or above ``top``, the
        entries are ``[]``: the caller compares. Raises `BrokerUnavailable`."""
        raise NotImplementedError(f"{type(self).__name__} keeps no logs")

    def local_log(self, channel: str) -> GroupLog | None:
        """The channel's log if it lives in this process (memory), for the layer to
        read directly instead of keeping a copy; None for a remote log (Redis)."""
        return None
