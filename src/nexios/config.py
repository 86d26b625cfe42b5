"""WebSocket settings, in one place."""

from __future__ import annotations

from collections.abc import Iterable
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
    idle_timeout:
        Close a connection (1001) that has received no message for this many seconds;
        None (default) never does. Pings and pongs do not count as messages.
    allowed_origins:
        The ``Origin`` values a browser handshake may carry, e.g.
        ``["https://chat.example.com", "https://*.example.com"]``; a handshake from any
        other origin is refused with HTTP 403 (cross-site WebSocket hijacking). ``None``
        (default) allows every origin: any web page the user visits can then open a
        WebSocket to this server with the user's cookies. Clients that send no Origin
        (non-browser clients) are not affected.
    max_connections:
        Open connections this process serves at most; the handshake beyond is refused
        with HTTP 503. None: no limit.
    max_connections_per_client:
        Open connections one client address may have at once; beyond, HTTP 503.
    rate_limit:
        ``(messages, seconds)``: a token bucket per connection that allows bursts of
        ``messages`` and that many per ``seconds`` on average; a client over it is closed
        with 1008 "Rate limit exceeded". None: no limit.

    Server-wide fields (pings, message size, compression) apply to the whole server;
    the others can be set per route with ``config=WebSocketConfig(...)``, which then
    replaces the app's configuration for that route.
    """

    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    max_message_size: int = 1 << 20
    compression: bool = False
    outbox_size: int = 256
    slow_consumer: Literal["drop_oldest", "drop_newest", "close"] = "drop_oldest"
    idle_timeout: float | None = None
    allowed_origins: Iterable[str] | None = None
    max_connections: int | None = None
    max_connections_per_client: int | None = None
    rate_limit: tuple[int, float] | None = None

    def __post_init__(self) -> None:
        if self.allowed_origins is not None:
            if isinstance(self.allowed_origins, str):
                raise ValueError(
                    "allowed_origins is a list of origins: write "
                    f"allowed_origins=[{self.allowed_origins!r}]."
                )
            origins = tuple(origin.rstrip("/").lower() for origin in self.allowed_origins)
            object.__setattr__(self, "allowed_origins", origins)
        for name in ("max_connections", "max_connections_per_client"):
            limit = getattr(self, name)
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be at least 1, or None for no limit.")
        if self.rate_limit is not None:
            messages, seconds = self.rate_limit
            if messages < 1 or seconds <= 0:
                raise ValueError(
                    "rate_limit is (messages, seconds), both positive: e.g. (20, 1.0)."
                )
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive, or None to turn it off.")
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
