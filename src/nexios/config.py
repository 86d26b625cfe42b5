"""WebSocket settings, in one place."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from nexios._origins import parse_origin

__all__ = ["ServerLimits", "WebSocketConfig", "limits_of"]


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What the server enforces below the app, on every connection (docs/security.md).

    handshake_timeout:
        Seconds a client has to send a whole request head (the upgrade request of a
        WebSocket); a slower one is closed (408 if anything arrived).
    max_request_line:
        Bytes of the request line (method, target, version); longer: HTTP 414.
    max_headers:
        Header lines in a request; more: HTTP 431.
    max_header_size:
        Bytes of all header lines together; more: HTTP 431. A single header line longer
        than 8 KiB is refused with 431 too: the WebSocket handshake parser reads no more.
    max_half_open:
        Connections accepted whose request head is not complete yet (they count toward
        ``WebSocketConfig.max_connections`` too); one more closes the oldest (408), so a
        burst of slow clients cannot use up the file descriptors a prompt one needs.
    max_fragments:
        Frames one message may arrive in (RFC 6455 section 5.4), empty ones included;
        more closes the connection with 1009.
    max_backlog:
        Bytes of received messages, after decompression, that may wait for the app;
        past it the server stops reading the socket until the app catches up.
    shutdown_timeout:
        Seconds that handlers get to finish after the server is told to stop (every
        client has been sent 1012); then they are cancelled and the process exits.
    """

    handshake_timeout: float = 10.0
    max_request_line: int = 8192
    max_headers: int = 128
    max_header_size: int = 64 * 1024
    max_half_open: int = 1000
    max_fragments: int = 4096
    max_backlog: int = 1 << 20
    shutdown_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("handshake_timeout", "shutdown_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive number of seconds.")
        for name in (
            "max_request_line",
            "max_headers",
            "max_header_size",
            "max_half_open",
            "max_fragments",
            "max_backlog",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1.")


_DEFAULT_LIMITS: Final = ServerLimits()


def limits_of(config: object) -> ServerLimits:
    """The limits of a server's config: those ``nexios.server.make_config`` put on it, or
    the defaults for a plain ``uvicorn.Config`` (our protocols served by
    ``uvicorn.run(..., ws=...)``)."""
    limits = getattr(config, "limits", None)
    return limits if isinstance(limits, ServerLimits) else _DEFAULT_LIMITS


_LIMIT_FIELDS: Final = tuple(field.name for field in dataclasses.fields(ServerLimits))


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
        Messages sent to one connection by id (``send_to``) that may wait for it; past
        it the oldest is dropped and counted. Group messages wait in the group's log.
    slow_consumer:
        What happens to a connection that falls off the end of a group's log (it did
        not read while the log dropped what it still had to get): ``"close"`` (default:
        close with 1013; the client rejoins with its last position) or ``"skip"`` (on to
        the newest message, the count of missed ones in stats and, with envelopes, in a
        message). ``"drop_oldest"`` and ``"drop_newest"`` mean ``"skip"``. See
        docs/channels.md.
    idle_timeout:
        Close a connection (1001) that has received no message for this many seconds;
        None (default) never does. Pings and pongs do not count as messages.
    allowed_origins:
        The ``Origin`` values a browser handshake may carry, e.g.
        ``["https://chat.example.com", "https://*.example.com"]``; a handshake from any
        other origin is refused with HTTP 403 (cross-site WebSocket hijacking). Origins
        are compared parsed (scheme, host, port); ``*.`` stands for one or more whole
        labels at the start of the host. ``None``
        (default) allows every origin: any web page the user visits can then open a
        WebSocket to this server with the user's cookies. Clients that send no Origin
        (non-browser clients) are not affected.
    max_connections:
        Connections this process serves at most: open WebSockets plus half-open
        connections (accepted, request head not complete: see ``max_half_open``); a
        handshake beyond is refused with HTTP 503. None: no limit. Keep ``max_half_open``
        below it: the difference is room that slow clients can never take from
        WebSockets.
    max_connections_per_client:
        Open connections one client address may have at once; beyond, HTTP 503.
    rate_limit:
        ``(messages, seconds)``: a token bucket per connection that allows bursts of
        ``messages`` and that many per ``seconds`` on average; a client over it is closed
        with 1008 "Rate limit exceeded". None: no limit.

    handshake_timeout, max_request_line, max_headers, max_header_size, max_half_open,
    max_fragments, max_backlog, shutdown_timeout:
        Limits the server enforces below the app: see `ServerLimits`.

    Server-wide fields (pings, message size, compression and the `ServerLimits`) apply
    to the whole server;
    the others can be set per route with ``config=WebSocketConfig(...)``, which then
    replaces the app's configuration for that route.
    """

    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    max_message_size: int = 1 << 20
    compression: bool = False
    outbox_size: int = 256
    slow_consumer: Literal["close", "skip", "drop_oldest", "drop_newest"] = "close"
    idle_timeout: float | None = None
    allowed_origins: Iterable[str] | None = None
    max_connections: int | None = None
    max_connections_per_client: int | None = None
    rate_limit: tuple[int, float] | None = None
    handshake_timeout: float = 10.0
    max_request_line: int = 8192
    max_headers: int = 128
    max_header_size: int = 64 * 1024
    max_half_open: int = 1000
    max_fragments: int = 4096
    max_backlog: int = 1 << 20
    shutdown_timeout: float = 10.0

    def server_limits(self) -> ServerLimits:
        """The fields that are `ServerLimits`, as one (what ``app.run`` gives the server)."""
        return ServerLimits(**{name: getattr(self, name) for name in _LIMIT_FIELDS})

    def __post_init__(self) -> None:
        self.server_limits()  # checks the limits
        if self.allowed_origins is not None:
            if isinstance(self.allowed_origins, str):
                raise ValueError(
                    "allowed_origins is a list of origins: write "
                    f"allowed_origins=[{self.allowed_origins!r}]."
                )
            origins = tuple(origin.strip().rstrip("/").lower() for origin in self.allowed_origins)
            for origin in origins:
                if origin != "*" and parse_origin(origin, wildcard=True) is None:
                    raise ValueError(
                        f"allowed_origins: {origin!r} is not an origin. Write "
                        "'scheme://host' or 'scheme://host:port' (no path), with '*.' only "
                        "as the host's first label, e.g. 'https://*.example.com', or '*'."
                    )
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
        if self.slow_consumer not in ("close", "skip", "drop_oldest", "drop_newest"):
            raise ValueError(
                f"slow_consumer is {self.slow_consumer!r}: use 'close' or 'skip' "
                "('drop_oldest' and 'drop_newest' are kept as names for 'skip')."
            )
        if self.max_message_size <= 0:
            raise ValueError("max_message_size must be a positive number of bytes.")
        for name in ("ping_interval", "ping_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, or None to turn it off.")
