"""What protects the server from its clients: admission at the handshake (origin,
connection limits), and per-connection limits afterwards (rate limit, idle timeout).

Every refusal and every limit reached is counted in ``GuardStats`` and logged once per
reason and process (the counts keep going).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from nexios._origins import origin_allowed
from nexios._tasks import spawn
from nexios.config import WebSocketConfig
from nexios.server.extensions import HALF_OPEN_EXTENSION

if TYPE_CHECKING:
    from nexios.websockets.base import WebSocket

__all__ = [
    "ConnectionGuard",
    "ConnectionWatch",
    "GuardStats",
    "origin_allowed",
]

logger = logging.getLogger("nexios.websockets")

RATE_LIMITED = (1008, "Rate limit exceeded")
IDLE = (1001, "Idle timeout")


class GuardStats:
    """Refused handshakes and limited connections, by reason."""

    __slots__ = ("idle_closed", "rate_limited", "refused_capacity", "refused_origin")

    def __init__(self) -> None:
        self.refused_origin = 0
        self.refused_capacity = 0
        self.rate_limited = 0
        self.idle_closed = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class ConnectionGuard:
    """Admission of new connections in this process."""

    def __init__(self) -> None:
        self.open = 0
        self.per_client: dict[str, int] = {}
        self.stats = GuardStats()
        self._logged: set[str] = set()

    def _log_once(self, reason: str, message: str, *args: object) -> None:
        if reason not in self._logged:
            self._logged.add(reason)
            logger.warning(message + " (logged once; see the guard's stats)", *args)

    def refusal(self, ws: WebSocket, config: WebSocketConfig) -> tuple[int, str] | None:
        """``(HTTP status, reason)`` if the handshake must be refused, else None."""
        allowed = config.allowed_origins
        if allowed is not None:
            origin = ws.headers.get("origin")
            if origin is not None and not origin_allowed(origin, tuple(allowed)):
                self.stats.refused_origin += 1
                self._log_once(
                    "origin",
                    "Refused a WebSocket handshake from origin %r to %s",
                    origin,
                    ws.scope.get("path"),
                )
                return 403, "Origin not allowed"
        if config.max_connections is not None:
            half_open = _half_open(ws)
            if self.open + half_open >= config.max_connections:
                self.stats.refused_capacity += 1
                self._log_once(
                    "capacity",
                    "Refused a WebSocket handshake: %d connections open and %d half-open "
                    "(limit %d)",
                    self.open,
                    half_open,
                    config.max_connections,
                )
                return 503, "Server at capacity"
        limit = config.max_connections_per_client
        if limit is not None:
            host = _client_host(ws)
            if self.per_client.get(host, 0) >= limit:
                self.stats.refused_capacity += 1
                self._log_once(
                    "client",
                    "Refused a WebSocket handshake: client %s has %d connections open",
                    host,
                    limit,
                )
                return 503, "Too many connections from this client"
        return None

    def enter(self, ws: WebSocket) -> None:
        self.open += 1
        host = _client_host(ws)
        self.per_client[host] = self.per_client.get(host, 0) + 1

    def leave(self, ws: WebSocket) -> None:
        self.open -= 1
        host = _client_host(ws)
        count = self.per_client.get(host, 0) - 1
        if count > 0:
            self.per_client[host] = count
        else:
            self.per_client.pop(host, None)

    def watch(self, ws: WebSocket, config: WebSocketConfig) -> ConnectionWatch | None:
        """The per-message limits of a connection, if its config has any."""
        if config.rate_limit is None and config.idle_timeout is None:
            return None
        return ConnectionWatch(ws, config, self)


def _half_open(ws: WebSocket) -> int:
    """Connections of this server whose request head is not complete yet: they hold a
    socket as an open connection does (the server's ``nexios.server.half_open`` scope
    extension; 0 on a server without it)."""
    extension = (ws.scope.get("extensions") or {}).get(HALF_OPEN_EXTENSION)
    if extension is None:
        return 0
    count: int = extension["half_open"]()
    return count


def _client_host(ws: WebSocket) -> str:
    client = ws.scope.get("client")
    return str(client[0]) if client else "-"


class ConnectionWatch:
    """Rate limit (token bucket) and idle timeout of one connection."""

    __slots__ = ("_capacity", "_guard", "_idle", "_last", "_rate", "_timer", "_tokens", "ws")

    def __init__(self, ws: WebSocket, config: WebSocketConfig, guard: ConnectionGuard) -> None:
        self.ws = ws
        self._guard = guard
        now = time.monotonic()
        self._last = now
        self._capacity = 0.0
        self._rate = 0.0
        self._tokens = 0.0
        if config.rate_limit is not None:
            messages, seconds = config.rate_limit
            self._capacity = self._tokens = float(messages)
            self._rate = messages / seconds
        self._idle = config.idle_timeout
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """The connection is accepted: start the idle clock."""
        if self._idle is not None:
            self._last = time.monotonic()
            self._timer = asyncio.get_running_loop().call_later(self._idle, self._check_idle)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def on_message(self) -> bool:
        """A message arrived: False if it is over the rate limit."""
        now = time.monotonic()
        if self._rate:
            tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
            if tokens < 1.0:
                self._tokens = tokens
                self._last = now
                self._guard.stats.rate_limited += 1
                self._guard._log_once(
                    "rate", "Closed a WebSocket over its rate limit (%s)", self.ws.scope.get("path")
                )
                return False
            self._tokens = tokens - 1.0
        self._last = now
        return True

    def _check_idle(self) -> None:
        assert self._idle is not None
        idle_for = time.monotonic() - self._last
        loop = asyncio.get_running_loop()
        if idle_for < self._idle:
            self._timer = loop.call_later(self._idle - idle_for, self._check_idle)
            return
        self._timer = None
        self._guard.stats.idle_closed += 1
        spawn(self._close_idle())

    async def _close_idle(self) -> None:
        try:
            await self.ws.close(*IDLE)
        except Exception:  # the peer is gone already
            logger.debug("Could not close idle WebSocket %s", self.ws.id, exc_info=True)
