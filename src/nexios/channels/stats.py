"""What the channel layer did and lost: `ChannelStats`, and the numbers that find
messages by id another process published and this one missed (`Sequences`)."""

from __future__ import annotations

__all__ = ["ChannelStats", "Sequences"]


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


class Sequences:
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
