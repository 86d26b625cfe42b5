"""WebSocket settings, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["WebSocketConfig"]


@dataclass(frozen=True, slots=True)
class WebSocketConfig:
    """How the server treats WebSocket connections. Every field has a safe default.

    ping_interval:
        Seconds between the server's keepalive pings (RFC 6455 section 5.5.2); ``None``
        turns them off.
    ping_timeout:
        Seconds to wait for the pong; a peer that does not answer is closed (1011).
    max_message_size:
        The largest message accepted, in bytes; a bigger one closes the connection with
        1009 (message too big).
    compression:
        Negotiate permessage-deflate (RFC 7692) with every client that offers it. Off by
        default: it nearly triples the memory each idle connection holds. A handler can
        still ask for it on one connection with ``ws.enable_compression()`` before
        ``accept()``.
    outbox_size:
        Messages that may wait to be sent to one connection (broadcasts, group sends).
    slow_consumer:
        What happens when a connection's outbox is full: ``"drop_oldest"`` (default),
        ``"drop_newest"``, or ``"close"`` (close with 1013). See docs/channels.md.
    """

    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    max_message_size: int = 1 << 20
    compression: bool = False
    outbox_size: int = 256
    slow_consumer: Literal["drop_oldest", "drop_newest", "close"] = "drop_oldest"

    def __post_init__(self) -> None:
        if self.outbox_size < 1:
            raise ValueError("outbox_size must be at least 1 message.")
        if self.slow_consumer not in ("drop_oldest", "drop_newest", "close"):
            raise ValueError(
                f"slow_consumer is {self.slow_consumer!r}: use 'drop_oldest', "
                "'drop_newest' or 'close'."
            )
        if self.max_message_size <= 0:
            raise ValueError("max_message_size must be a positive number of bytes.")
        for name in ("ping_interval", "ping_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, or None to turn it off.")
