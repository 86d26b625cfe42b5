"""uvicorn's HTTP/1.1 protocols, bounding what a client may hold before its request head
is complete.

Every connection, plain HTTP or WebSocket, starts as an HTTP request whose head (request
line and header lines) uvicorn's HTTP protocol parses: httptools (the default) or h11.
As they are, nothing limits how long a client may take to send that head, nor (with
httptools) how big it may grow, and a WebSocket upgrade whose head websockets' parser
rejects after uvicorn hands it over is never answered. The subclasses here add, below
the app and for every request:

- a handshake timeout: a head that is not complete ``handshake_timeout`` seconds after
  the connection was accepted (or after the first byte of the next request on a
  keep-alive connection) is answered 408 Request Timeout (RFC 9110 section 15.5.9) and
  the connection closed, or just closed if nothing of the request arrived. Idle time
  between requests stays uvicorn's ``timeout_keep_alive``;
- limits on the head, answered at once, complete or not: a request line over
  ``max_request_line`` bytes is 414 URI Too Long (RFC 9112 section 3, RFC 9110 section
  15.5.15); more than ``max_headers`` header lines, one over 8 KiB (websockets'
  ``MAX_LINE_LENGTH``, what its handshake parser reads at most) or all of them over
  ``max_header_size`` bytes is 431 Request Header Fields Too Large (RFC 9110 section 5.4:
  a server MUST answer a 4xx to fields larger than it wishes to process; 431 is RFC 6585
  section 5). Upgrade requests are also held to websockets' own limits on the request
  line and the number of headers, so that one passing here passes its parser too;
- a cap on half-open connections (accepted, head not complete) per server,
  ``max_half_open``: the oldest is closed (408) to make room for a new one, so a burst of
  slow clients cannot use up the file descriptors a prompt client needs.

A refusal is answered with ``Connection: close`` and the connection then closed in stages
(RFC 9112 section 9.6): the write side at once, the socket once the client has closed its
side or after ``LINGER`` seconds, reading and dropping what the client still sends, so
that the client reads the answer rather than a reset. Every close is counted
(`HandshakeStats`, in the ``nexios.server.half_open`` scope extension, see
``docs/asgi-extensions.md``) and logged once per burst: a WARNING when closes start, with
the reason, and an INFO with the counts once none has happened for a while.
"""

from __future__ import annotations

import asyncio
import http
import importlib.util
import logging
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS

from nexios.config import ServerLimits, limits_of
from nexios.server.extensions import HALF_OPEN_EXTENSION

if TYPE_CHECKING:
    from uvicorn.server import ServerState

__all__ = [
    "HalfOpenConnections",
    "HandshakeStats",
    "NexiosH11Protocol",
    "http_protocol",
    "refusal",
]

# uvicorn's: these are its HTTP protocols' messages, shown as its log level says.
logger = logging.getLogger("uvicorn.error")

# Seconds a refused client has to read the answer and close before the socket is aborted.
LINGER: Final = 1.0
# What a request line has besides method and target: " HTTP/1.1\r\n" and a space.
_REQUEST_LINE_REST: Final = len(b"  HTTP/1.1\r\n")
# The shortest method (GET, PUT): the request line's length is known before the method.
_SHORTEST_METHOD: Final = 3
# A header line as uvicorn rebuilds it for websockets: name, ": ", value, "\r\n".
_HEADER_LINE_REST: Final = 4
# h11 may buffer up to our own limits plus one read (asyncio and uvloop read 256 KiB).
_H11_READ_SLACK: Final = 256 * 1024


def refusal(status: int, text: str, default_headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A whole HTTP/1.1 response that refuses a request: *status*, the server's default
    headers, ``connection: close`` and *text* as a plain-text body that says why."""
    body = text.encode() + b"\n"
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode())]
    for name, value in default_headers:
        parts += [name, b": ", value, b"\r\n"]
    parts.append(
        b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % len(body)
    )
    parts.append(body)
    return b"".join(parts)


class HandshakeStats:
    """What one server closed before the request head was complete, by reason."""

    __slots__ = (
        "evicted",
        "half_open_peak",
        "header_line_too_long",
        "headers_too_large",
        "request_line_too_long",
        "timed_out",
        "too_many_headers",
    )

    def __init__(self) -> None:
        self.timed_out = 0
        self.evicted = 0
        self.request_line_too_long = 0
        self.too_many_headers = 0
        self.header_line_too_long = 0
        self.headers_too_large = 0
        self.half_open_peak = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in sorted(self.__slots__)}


# The closes, with their answer and what the burst's WARNING says of the first one.
_STATUS: Final = {
    "timed_out": 408,
    "evicted": 408,
    "request_line_too_long": 414,
    "too_many_headers": 431,
    "header_line_too_long": 431,
    "headers_too_large": 431,
}


def _why(reason: str, limits: ServerLimits) -> str:
    return {
        "timed_out": f"a request head not complete within handshake_timeout="
        f"{limits.handshake_timeout:g} s (408)",
        "evicted": f"max_half_open={limits.max_half_open} connections were waiting for "
        "their request head: the oldest is closed to make room (408)",
        "request_line_too_long": f"a request line over max_request_line="
        f"{limits.max_request_line} bytes (414)",
        "too_many_headers": f"more than max_headers={limits.max_headers} header lines (431)",
        "header_line_too_long": f"a header line over {MAX_LINE_LENGTH} bytes (431)",
        "headers_too_large": f"header lines over max_header_size={limits.max_header_size} "
        "bytes (431)",
    }[reason]


class HalfOpenConnections:
    """The connections of one server whose request head is not complete, oldest first.

    One timer for all of them: the timeout is the same for every connection, so the
    order they were added in is the order of their deadlines.
    """

    def __init__(self, limits: ServerLimits, loop: asyncio.AbstractEventLoop) -> None:
        self.limits = limits
        self._loop = loop
        self._deadlines: dict[_HeadGuard, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.stats = HandshakeStats()
        # The current burst of closes: counts by reason, when it started, the last close.
        self._burst: dict[str, int] = {}
        self._burst_started = 0.0
        self._last_close = 0.0
        self._quiet = max(1.0, min(limits.handshake_timeout, 10.0))
        # The ``nexios.server.half_open`` scope extension, shared by every request.
        self.extension: dict[object, object] = {
            "half_open": self.count,
            "stats": self.stats.as_dict,
        }

    def count(self) -> int:
        """Connections accepted whose request head is not complete yet."""
        return len(self._deadlines)

    def add(self, connection: _HeadGuard) -> None:
        deadlines = self._deadlines
        if len(deadlines) >= self.limits.max_half_open:
            oldest = next(iter(deadlines))
            del deadlines[oldest]
            self.closed("evicted", oldest.client)
            oldest._drop()
        deadlines[connection] = self._loop.time() + self.limits.handshake_timeout
        if len(deadlines) > self.stats.half_open_peak:
            self.stats.half_open_peak = len(deadlines)
        if self._timer is None:
            self._timer = self._loop.call_at(deadlines[next(iter(deadlines))], self._expire)

    def remove(self, connection: _HeadGuard) -> None:
        # The timer stays: it finds a later deadline first and waits for that one.
        self._deadlines.pop(connection, None)

    def _expire(self) -> None:
        self._timer = None
        # Timers may fire a little early: what is due within a few ms is due now.
        now = self._loop.time() + 0.005
        deadlines = self._deadlines
        while deadlines:
            connection = next(iter(deadlines))
            deadline = deadlines[connection]
            if deadline > now:
                self._timer = self._loop.call_at(deadline, self._expire)
                return
            del deadlines[connection]
            self.closed("timed_out", connection.client)
            connection._drop()

    def closed(self, reason: str, client: tuple[str, int] | None) -> None:
        """Count a connection closed for *reason*; log once per burst."""
        setattr(self.stats, reason, getattr(self.stats, reason) + 1)
        now = self._loop.time()
        if not self._burst:
            self._burst_started = now
            logger.warning(
                "Closing connections before their request head is complete: %s, first "
                "from %s. Further closes are counted, not logged, until none happens "
                "for %g s.",
                _why(reason, self.limits),
                f"{client[0]}:{client[1]}" if client else "an unknown client",
                self._quiet,
            )
            self._loop.call_later(self._quiet, self._end_burst)
        self._burst[reason] = self._burst.get(reason, 0) + 1
        self._last_close = now

    def _end_burst(self) -> None:
        now = self._loop.time()
        quiet_since = now - self._last_close
        if quiet_since < self._quiet - 0.005:
            self._loop.call_later(self._quiet - quiet_since, self._end_burst)
            return
        burst, self._burst = self._burst, {}
        logger.info(
            "Closed %d connections before their request head was complete, in %.1f s (%s); "
            "%d half-open now, %d at most so far.",
            sum(burst.values()),
            self._last_close - self._burst_started,
            ", ".join(f"{reason}={count}" for reason, count in sorted(burst.items())),
            self.count(),
            self.stats.half_open_peak,
        )


_SERVERS: weakref.WeakKeyDictionary[ServerState, HalfOpenConnections] = weakref.WeakKeyDictionary()


def _half_open(
    state: ServerState, config: uvicorn.Config, loop: asyncio.AbstractEventLoop
) -> HalfOpenConnections:
    """The server's `HalfOpenConnections` (made by its first connection)."""
    connections = _SERVERS.get(state)
    if connections is None:
        connections = _SERVERS[state] = HalfOpenConnections(limits_of(config), loop)
    return connections


class _Refused(Exception):
    """Raised in a parser callback: the head is over a limit (the reason is the message)."""


class _GuardState:
    """One connection's request head, as `_HeadGuard` follows it."""

    __slots__ = (
        "half_open",
        "head_bytes",
        "header_bytes",
        "header_count",
        "idle",
        "in_head",
        "limits",
        "line_bytes",
        "line_ends",
        "linger",
        "received",
        "refusal",
        "uncounted",
    )

    def __init__(self, half_open: HalfOpenConnections) -> None:
        self.half_open = half_open
        self.limits = half_open.limits
        self.in_head = False
        # Bytes of the unfinished head; of its last, unfinished, line; its line ends.
        self.head_bytes = self.line_bytes = self.line_ends = 0
        # The head began inside a read already given to the parser: that read's share
        # of it is unknown, so the raw counts start with the next read.
        self.uncounted = False
        # Something of this request arrived (408 on timeout), else the socket just closes.
        self.received = False
        # Header lines the parser reported complete, and their bytes as rebuilt.
        self.header_count = self.header_bytes = 0
        # Why the request was refused; the timer that aborts the socket after `LINGER`.
        self.refusal: str | None = None
        self.linger: asyncio.TimerHandle | None = None
        # httptools: between two requests of a keep-alive connection, the next read
        # starts a head.
        self.idle = False


class _HeadGuard:
    """What both protocols add: the request head's timer, limits and refusal.

    The head of a request starts when the connection is accepted, or with the first
    byte of the next request on a keep-alive connection; from then until the head is
    complete the connection is half-open (`HalfOpenConnections`). Complete lines are
    checked as the parser reports them; while the head is unfinished, the raw bytes that
    arrived are counted too (only then, and per read, not per byte): the parsers buffer a
    header line they have not seen the end of.
    """

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    server_state: ServerState
    client: tuple[str, int] | None
    logger: logging.Logger

    # The connection's state, in one attribute: uvicorn's protocols have 28, and more
    # than 30 would take the instance dict off CPython's shared-keys layout (every
    # attribute access slower, five times the memory).
    _guard: _GuardState

    def _init_guard(self, config: uvicorn.Config) -> None:
        self._guard = _GuardState(_half_open(self.server_state, config, self.loop))

    def _start_head(self, *, received: bool) -> None:
        guard = self._guard
        guard.in_head = True
        guard.received = received
        guard.uncounted = False
        guard.head_bytes = guard.line_bytes = guard.line_ends = 0
        guard.header_count = guard.header_bytes = 0
        guard.half_open.add(self)

    def _end_head(self) -> None:
        guard = self._guard
        # A pipelined request may be checked without a `_start_head` (h11): start at 0.
        guard.header_count = guard.header_bytes = 0
        if guard.in_head:
            guard.in_head = False
            guard.half_open.remove(self)

    def _end_guard(self) -> None:
        """The connection is lost."""
        self._end_head()
        linger = self._guard.linger
        if linger is not None:
            linger.cancel()
            self._guard.linger = None

    def _drop(self) -> None:
        """Timed out, or evicted to make room (already out of `HalfOpenConnections`)."""
        self._guard.in_head = False
        transport = self.transport
        if transport.is_closing():
            return
        cycle = getattr(self, "cycle", None)
        answering = cycle is not None and not cycle.response_complete
        if self._guard.received and not answering:
            self._answer(408, "The request did not arrive in time.")
        if transport.get_write_buffer_size():
            transport.abort()  # a client that does not read does not get to hold the socket
        else:
            transport.close()

    def _fail(self, reason: str) -> None:
        """In a parser callback: stop the parser; the protocol then refuses for *reason*."""
        self._guard.refusal = reason
        raise _Refused(reason)

    def _refuse(self, reason: str) -> None:
        """Answer the status of *reason* at once and close the connection in stages."""
        self._guard.refusal = reason
        self._guard.half_open.closed(reason, self.client)
        self._end_head()
        status = _STATUS[reason]
        self._answer(status, http.HTTPStatus(status).description + ".")
        transport = self.transport
        if not transport.can_write_eof():
            transport.close()
            return
        # RFC 9112 section 9.6: half-close, keep reading (and dropping) until the client
        # closes, so that its unread request does not turn our answer into a reset.
        transport.write_eof()
        self._guard.linger = self.loop.call_later(LINGER, transport.abort)

    def _answer(self, status: int, text: str) -> None:
        self.transport.write(refusal(status, text, self.server_state.default_headers))

    def _unfinished(self, data: bytes) -> str | None:
        """*data* was read and the head is still not complete: the reason to refuse it now,
        if any. The last line is the one the parser holds; its length is that of the
        bytes after the last line end."""
        if self._guard.uncounted:
            self._guard.uncounted = False
            return None
        size = len(data)
        self._guard.head_bytes += size
        end = data.rfind(b"\n")
        if end < 0:
            self._guard.line_bytes += size
        else:
            self._guard.line_bytes = size - end - 1
            self._guard.line_ends += data.count(b"\n", 0, end + 1)
        limits = self._guard.limits
        # The line still needs its end (CRLF) to be complete.
        line = self._guard.line_bytes + 2
        if self._guard.line_ends == 0:
            if line > limits.max_request_line:
                return "request_line_too_long"
        elif line > MAX_LINE_LENGTH:
            return "header_line_too_long"
        if self._guard.line_ends - 1 > limits.max_headers:
            return "too_many_headers"
        if self._guard.head_bytes > limits.max_request_line + limits.max_header_size:
            return "headers_too_large"
        return None

    def _header(self, name: bytes, value: bytes) -> str | None:
        """A complete header line: the reason to refuse the request, if any."""
        count = self._guard.header_count = self._guard.header_count + 1
        size = len(name) + len(value) + _HEADER_LINE_REST
        total = self._guard.header_bytes = self._guard.header_bytes + size
        return self._over(count, size, total)

    def _over(self, count: int, size: int, total: int) -> str | None:
        """Header lines so far, the size of the last one and of all of them: the limit
        they are over, if any."""
        limits = self._guard.limits
        if count > limits.max_headers:
            return "too_many_headers"
        if size > MAX_LINE_LENGTH:
            return "header_line_too_long"
        if total > limits.max_header_size:
            return "headers_too_large"
        return None

    def _complete(self, request_line: int, upgrade: bool) -> str | None:
        """The head is complete (its headers all went through `_header`): the reason to
        refuse it, if any. An upgrade must also pass websockets' handshake parser, which
        reads lines of ``MAX_LINE_LENGTH`` bytes and ``MAX_NUM_HEADERS`` headers at most."""
        limit = self._guard.limits.max_request_line
        if upgrade:
            limit = min(limit, MAX_LINE_LENGTH)
        if request_line > limit:
            return "request_line_too_long"
        if upgrade and self._guard.header_count > MAX_NUM_HEADERS:
            return "too_many_headers"
        return None

    def _extend_websocket_scope(self) -> None:
        """After uvicorn handed the connection to the WebSocket protocol: its scope gets the
        extension too. Its app task is scheduled but has not started, so it sees it."""
        scope = getattr(self.transport.get_protocol(), "scope", None)
        if isinstance(scope, dict):
            extension = self._guard.half_open.extension
            scope.setdefault("extensions", {})[HALF_OPEN_EXTENSION] = extension


class _H11Connection(h11.Connection):
    """h11's server connection, whose every request head goes past its protocol's limits
    before uvicorn sees it; one over a limit has been refused and reads as ``PAUSED``."""

    def __init__(self, protocol: NexiosH11Protocol, max_incomplete_event_size: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_incomplete_event_size)
        self._protocol = protocol

    def next_event(self) -> Any:
        event = super().next_event()
        if type(event) is h11.Request and not self._protocol._head_complete(event):
            return h11.PAUSED
        return event


class NexiosH11Protocol(_HeadGuard, H11Protocol):
    """uvicorn's h11 protocol with the request head's timeout, limits and half-open cap."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._init_guard(config)
        size = config.h11_max_incomplete_event_size
        if size is None:
            # Ours, not h11's 16 KiB: our limits answer 414 and 431 before h11's 400.
            size = self._guard.limits.max_request_line + self._guard.limits.max_header_size
            size += _H11_READ_SLACK
        self.conn = _H11Connection(self, size)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head(received=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_guard()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._guard.refusal is not None:
            return  # refused: dropped until the client closes
        if self._guard.in_head:
            self._guard.received = True
        elif self.conn.their_state is h11.IDLE:
            self._start_head(received=True)  # the next request on a keep-alive connection
        super().data_received(data)
        if self._guard.refusal is not None:
            self.flow.resume_reading()  # refused inside `handle_events`, which paused
        elif self._guard.in_head and not self.transport.is_closing():
            reason = self._unfinished(data)
            if reason is not None:
                self._refuse(reason)

    def _head_complete(self, event: h11.Request) -> bool:
        """h11 parsed a request head: False if it is over a limit (then refused)."""
        upgrade = False
        reason = None
        for name, value in event.headers:
            reason = self._header(name, value)
            if reason is not None:
                break
            if name == b"upgrade":
                upgrade = True
        if reason is None:
            line = len(event.method) + len(event.target) + _REQUEST_LINE_REST
            reason = self._complete(line, upgrade)
        if reason is not None:
            self._refuse(reason)
            return False
        self._end_head()
        return True

    def _should_upgrade(self) -> bool:
        # uvicorn asks this of every request, right after building its scope.
        self.scope["extensions"] = {HALF_OPEN_EXTENSION: self._guard.half_open.extension}
        return super()._should_upgrade()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        super().handle_websocket_upgrade(event)
        self._extend_websocket_scope()


if TYPE_CHECKING or importlib.util.find_spec("httptools") is not None:
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    _on_header = HttpToolsProtocol.on_header

    class NexiosHttpToolsProtocol(_HeadGuard, HttpToolsProtocol):
        """uvicorn's httptools protocol with the request head's timeout, limits and
        half-open cap."""

        def __init__(
            self,
            config: uvicorn.Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self._init_guard(config)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_head(received=False)

        def connection_lost(self, exc: Exception | None) -> None:
            self._end_guard()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            # uvicorn's, with the refusals, and the raw counts while the head is unfinished.
            guard = self._guard
            if guard.refusal is not None:
                return  # refused: dropped until the client closes
            if guard.in_head:
                guard.received = True
            elif guard.idle:
                self._start_head(received=True)  # the next request on a keep-alive connection
            self._unset_keepalive_if_required()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            except httptools.HttpParserError:
                if guard.refusal is not None:
                    self._refuse(guard.refusal)
                    return
                message = "Invalid HTTP request received."
                self.logger.warning(message)
                self.send_400_response(message)
                return
            if guard.in_head and not self.transport.is_closing():
                reason = self._unfinished(data)
                if reason is not None:
                    self._refuse(reason)

        # Parser callbacks

        def on_message_begin(self) -> None:
            guard = self._guard
            if not guard.in_head:
                # A pipelined request, or one right after a body, in the same read.
                self._start_head(received=True)
                guard.uncounted = True
            guard.idle = False
            super().on_message_begin()
            self.scope["extensions"] = {HALF_OPEN_EXTENSION: guard.half_open.extension}

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            if (
                len(self.url) + _SHORTEST_METHOD + _REQUEST_LINE_REST
                > self._guard.limits.max_request_line
            ):
                self._fail("request_line_too_long")

        def on_header(self, name: bytes, value: bytes) -> None:
            # Once per header line of every request: `_header`, inline.
            guard = self._guard
            count = guard.header_count = guard.header_count + 1
            size = len(name) + len(value) + _HEADER_LINE_REST
            total = guard.header_bytes = guard.header_bytes + size
            limits = guard.limits
            if (
                count > limits.max_headers
                or size > MAX_LINE_LENGTH
                or total > limits.max_header_size
            ):
                self._fail(self._over(count, size, total) or "headers_too_large")
            _on_header(self, name, value)

        def on_headers_complete(self) -> None:
            line = len(self.parser.get_method()) + len(self.url) + _REQUEST_LINE_REST
            reason = self._complete(line, self.parser.should_upgrade())
            if reason is not None:
                self._fail(reason)
            self._end_head()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._guard.idle = True
            super().on_message_complete()

        def handle_websocket_upgrade(self) -> None:
            super().handle_websocket_upgrade()
            self._extend_websocket_scope()


def http_protocol(name: Any) -> Any:
    """The protocol for uvicorn's ``http=`` option *name*: ours for ``"httptools"``,
    ``"h11"`` and ``"auto"``; anything else (a class of the user's) as it is."""
    if name == "auto":
        name = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    if name == "httptools":
        return NexiosHttpToolsProtocol
    if name == "h11":
        return NexiosH11Protocol
    return name
