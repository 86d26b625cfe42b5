"""The nexios server: uvicorn with a WebSocket protocol that speaks the nexios ASGI extensions.

`NexiosWebSocketProtocol` subclasses uvicorn's sans-I/O ``websockets`` protocol and adds what
``docs/asgi-extensions.md`` specifies: app-sent pings and pongs, control events for the app,
and permessage-deflate chosen per connection at accept time. `make_config` and `run` start
uvicorn with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import threading
import time
from asyncio.transports import BaseTransport
from collections import Counter, deque
from collections.abc import Generator, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast

import uvicorn
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import (
    HeaderLineTooLong,
    PayloadTooBig,
    RequestLineTooLong,
    TooManyHeaders,
)
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from nexios.config import ServerLimits, limits_of
from nexios.server.extensions import (
    CONTROL_EXTENSION,
    DEFLATE_EXTENSION,
    SEND_NOWAIT_EXTENSION,
)
from nexios.server.frames import BINARY, TEXT, frame_header
from nexios.server.http import http_protocol, refusal

if TYPE_CHECKING:
    import socket
    from types import FrameType

    from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
    from uvicorn.server import ServerState

    from nexios.types import ASGIApp

__all__ = [
    "NexiosWebSocketProtocol",
    "ProcessServer",
    "ServerConfig",
    "limits_of",
    "make_config",
    "run",
]


# RFC 6455 section 5.5: "All control frames MUST have a payload length of 125 bytes or less".
MAX_CONTROL_PAYLOAD: Final = 125
# Control events waiting for the app, at most; more are dropped (and counted).
MAX_PENDING_CONTROL: Final = 32
# What a received frame costs beyond its payload, in bytes, wherever sizes are summed:
# about the memory of the objects a frame becomes (the parsed frame, then the event
# waiting for the app). Empty frames are not free.
FRAME_COST: Final = 256
# Bytes of frames (payload + FRAME_COST each) parsed from one connection in one turn of
# the event loop; the rest of a read waits for a later turn, so that one connection's
# flood of small frames cannot keep the loop from every other connection.
TURN_BUDGET: Final = 64 * 1024


def _deflate_factory() -> ServerPerMessageDeflateFactory:
    # 4 KiB windows and memLevel 5 (uvicorn's choice too) keep zlib's state per connection small.
    return ServerPerMessageDeflateFactory(
        server_max_window_bits=12,
        client_max_window_bits=12,
        compress_settings={"memLevel": 5},
    )


class _TooManyFragments(PayloadTooBig):
    """A message in more frames than ``ServerLimits.max_fragments``. websockets' parser
    fails the connection with 1009 and ``str()`` of this as the reason."""

    def __init__(self) -> None:
        Exception.__init__(self)
        self.message = "message in too many fragments"
        self.current_size = None

    def set_current_size(self, current_size: int | None) -> None:
        pass  # the size is not what is wrong


class _Reader(StreamReader):
    """websockets' stream reader, which can *hold*: while `hold` is set, the parser stops
    before the next frame, as if no more data had arrived; what was fed stays in
    ``buffer`` until the protocol lets the parser go on."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False

    def at_eof(self) -> Generator[None, None, bool]:
        # websockets' parser asks this before each frame.
        while True:
            if self.buffer and not self.hold:
                return False
            if self.eof:
                return True
            yield


class _ServerConnection(ServerProtocol):
    """websockets' sans-I/O server connection, with a bound on the frames of a message,
    a parser that stops when the turn's budget is spent, and a Close allowed inside a
    fragmented message.

    - RFC 6455 section 5.4 puts no bound on the fragments of a message, and websockets'
      size limit does not count empty ones: past *max_fragments* frames the connection is
      failed with 1009 (section 7.4.1, "a message that is too big for it to process").
    - `budget`: bytes (payload + FRAME_COST per frame) the parser may still produce before
      it holds (`_Reader.hold`); the protocol sets it before each feed.
    - RFC 6455 section 5.4: control frames MAY be injected in the middle of a fragmented
      message, and a Close is a control frame. websockets treats one that arrives before
      the final fragment as a protocol error and answers 1002; here it is the peer's
      closing handshake, as at any other time: the unfinished message is dropped, the
      Close is echoed (section 5.5.1) and the app hears the peer's code. (Autobahn case
      7.1.5.)
    """

    def __init__(self, *, max_fragments: int, **options: Any) -> None:
        super().__init__(**options)
        self.max_fragments = max_fragments
        self.fragments = 0
        self.budget = 0  # the protocol sets it before each feed
        # The reader that can hold; the parser restarts on it (it has read nothing yet).
        self.reader = _Reader()
        self.parser = self.parse()
        next(self.parser)

    def recv_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is _CONT:
            if self.current_size is not None:
                self.fragments += 1
                if self.fragments > self.max_fragments:
                    raise _TooManyFragments()
        elif opcode is _CLOSE:
            self.current_size = None
        elif not frame.fin:  # the first frame of a fragmented message
            self.fragments = 1
        _recv_frame(self, frame)
        self.budget -= len(frame.data) + FRAME_COST
        if self.budget < 0:
            cast("_Reader", self.reader).hold = True

    def accept(self, request: Request) -> Response:
        response = super().accept(request)
        if response.status_code != 101 and request.headers.get("Sec-WebSocket-Version") != "13":
            # RFC 6455 section 4.2.2: refusing a version, the server MUST say which
            # version it speaks.
            response.headers["Sec-WebSocket-Version"] = "13"
        return response


_recv_frame = ServerProtocol.recv_frame
_TEXT, _BINARY, _CONT, _CLOSE = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.CLOSE


class _Inbox:
    """The events waiting for the app: what uvicorn keeps in an ``asyncio.Queue``, with
    only what uvicorn's code uses of it (``put_nowait``), read by
    `NexiosWebSocketProtocol.receive` without a coroutine of its own."""

    __slots__ = ("items", "waiters")

    def __init__(self) -> None:
        self.items: deque[ASGIReceiveEvent] = deque()
        # Nearly always empty or one long: a list is a tenth of an empty deque's memory.
        self.waiters: list[asyncio.Future[None]] = []

    def put_nowait(self, item: ASGIReceiveEvent) -> None:
        self.items.append(item)
        if self.waiters:
            self.wake()

    def wake(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return


class NexiosWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol plus the nexios ASGI extensions.

    Without the ``nexios.*`` keys in the app's ``websocket.accept`` the app sees uvicorn's
    behaviour (permessage-deflate then follows the server-wide ``ws_per_message_deflate``),
    with these fixes:

    - a keepalive timeout reaches the app as ``websocket.disconnect`` with code 1011 (uvicorn
      reports only the lost connection, 1005);
    - messages that arrived in the same read as a protocol error (say, an oversized message)
      reach the app before the disconnect (uvicorn drops them);
    - a text message with invalid UTF-8 that arrives in the same read as the peer's Close is
      dropped and that close reported (uvicorn's own 1007 path raises there);
    - a Close that arrives in the middle of a fragmented message is echoed with the peer's
      code and the unfinished message dropped (websockets fails the connection with 1002);
    - once the server itself has failed the connection (a protocol error from the peer, a
      keepalive timeout), a send from the app raises ClientDisconnected and a close does
      nothing, as after the peer's Close (uvicorn raises RuntimeError, as if the app had sent
      after its own close);
    - a peer that stops reading cannot hold a connection open: ``websocket.close`` goes out
      without waiting for the write buffer to drain, and a socket that is still not closed
      ``ABORT_AFTER`` seconds after it should have been is aborted (asyncio's ``close()``
      waits for the buffer to flush, which a peer with a zero window never allows).

    Against hostile clients (`ServerLimits`):

    - a message in more than ``max_fragments`` frames closes the connection with 1009;
    - the parser runs on at most TURN_BUDGET bytes of frames per turn of the event loop
      (FRAME_COST per frame, so empty frames count), and goes on at the next turn;
    - inbound backpressure: while the app has more than ``max_backlog`` bytes of messages
      waiting (after decompression, FRAME_COST each), the parser holds what was read,
      still compressed, and the socket is not read; both go on once the app has read
      the backlog down to half;
    - a handshake that websockets' parser refuses (a request line or header line too
      long, too many headers, a body) is answered 414, 431 or 400, then closed.

    What is refused is counted in `refused` (class-wide, by reason) and logged once per
    reason.
    """

    # Refusals of hostile input since the process started, by reason.
    refused: ClassVar[Counter[str]] = Counter()
    conn: _ServerConnection

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # uvicorn's connection, with the same settings, as `_ServerConnection`. uvicorn makes
        # permessage-deflate available only when the server-wide setting is on. nexios lets
        # the app ask for it per connection, so it must be negotiable at handshake time
        # whatever the setting; the app's accept decides whether the result is kept.
        limits = limits_of(config)
        self.conn = _ServerConnection(
            max_fragments=limits.max_fragments,
            extensions=self.conn.available_extensions or [_deflate_factory()],
            max_size=config.ws_max_size,
            logger=self.conn.logger,
        )
        self._reader = cast("_Reader", self.conn.reader)
        self._max_backlog = limits.max_backlog
        self._turn_budget = min(TURN_BUDGET, limits.max_backlog)
        # Reading resumes once the app has brought the backlog down to this.
        self._resume_at = limits.max_backlog // 2
        # Bytes of the messages waiting for the app (text counted in characters), plus
        # FRAME_COST each.
        self._waiting = 0
        self._go_on_scheduled = False
        self._inbox = _Inbox()
        self.queue = cast("asyncio.Queue[ASGIReceiveEvent]", self._inbox)
        self._deflate_offered = False
        self._forward_control = False
        self._pending_control = 0
        self.control_events_dropped = 0
        # The server failed the connection itself (see `_closed_by_server_send`).
        self._closed_by_server = False

    def connection_made(self, transport: BaseTransport) -> None:
        super().connection_made(transport)
        self.transport = cast("asyncio.Transport", _AbortingTransport(self.transport, self.loop))

    def connection_lost(self, exc: Exception | None) -> None:
        transport = self.transport
        if isinstance(transport, _AbortingTransport):
            transport.lost()
        if (
            self.handshake_complete
            and not self.close_sent
            and self.conn.close_rcvd is None
            and self.initial_response is None
        ):
            # RFC 6455 section 7.1.5: a connection that ends without a Close frame is
            # 1006 (abnormal closure); uvicorn says 1005, the code of a Close without a
            # status, and the app could not tell a crash from a clean close.
            self.queue.put_nowait(
                cast("ASGIReceiveEvent", {"type": "websocket.disconnect", "code": 1006})
            )
        super().connection_lost(exc)

    # Handshake

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code != 101:
            return
        # The client offered permessage-deflate with parameters we accept: `conn.accept()`
        # negotiated it. Only `_settle_extensions` may still decline it, before the 101 is sent.
        self._deflate_offered = any(isinstance(e, PerMessageDeflate) for e in self.conn.extensions)
        # super() scheduled the app's task but it has not started: the scope can still grow.
        extensions = self.scope.setdefault("extensions", {})
        extensions[CONTROL_EXTENSION] = {}
        extensions[DEFLATE_EXTENSION] = {"offered": self._deflate_offered}
        extensions[SEND_NOWAIT_EXTENSION] = {"send": self.send, "send_nowait": self.send_nowait}

    def _settle_extensions(self, message: Mapping[str, Any]) -> None:
        """Apply the ``nexios.*`` keys of the app's accept, before the 101 goes out."""
        self._forward_control = bool(message.get("nexios.control", False))
        wanted = message.get("nexios.permessage_deflate")
        if wanted is None:
            wanted = self.config.ws_per_message_deflate
        if self._deflate_offered and not wanted:
            # Decline: the response header and the codec list must agree (RFC 6455 section
            # 9.1), or the client would inflate frames we never deflated. permessage-deflate is
            # the only extension this protocol makes available, so nothing else is dropped. The
            # list is emptied in place: the frame parser may already hold a reference to it.
            del self.response.headers["Sec-WebSocket-Extensions"]
            self.conn.extensions.clear()

    # Incoming data

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader.hold:
            # The parser is held: the data waits behind what is held.
            reader.feed_data(data)
            self._held()
            return
        waiting = self._waiting
        budget = self._turn_budget if not waiting else self._max_backlog - waiting
        if budget <= 0:
            reader.feed_data(data)
            reader.hold = True
            self._held()
            return
        conn = self.conn
        conn.budget = budget if budget < self._turn_budget else self._turn_budget
        conn.receive_data(data)
        # Deliver what was parsed before a parser error first, so the app sees the messages
        # that preceded, e.g., an oversized one (uvicorn drops them), then the disconnect.
        self.handle_events()
        if conn.parser_exc is not None or reader.hold or not self.handshake_initiated:
            self._after_events()

    def _after_events(self) -> None:
        """After the events of a feed of the parser: a parser error, a refused handshake,
        or a parser that holds."""
        conn = self.conn
        # After a parser error websockets discards all input: report it and close, unless the
        # socket is already closing (handle_events may have failed the connection itself).
        if conn.parser_exc is not None:
            if not self.transport.is_closing():
                self.handle_parser_exception()
        elif (
            not self.handshake_initiated
            and conn.handshake_exc is not None
            and not self.transport.is_closing()
        ):
            self._refuse_handshake(conn.handshake_exc)
        elif self._reader.hold:
            if self._reader.buffer:
                self._held()
            else:
                # The budget ran out on the last frame of the read: nothing waits to be
                # parsed, and the next read checks the backlog before it is parsed.
                self._reader.hold = False

    # Inbound flow control

    def _budget(self) -> int:
        """Bytes of frames the parser may produce now: a turn's worth, and no more than
        takes the app's backlog past ``max_backlog``."""
        if self.close_sent:
            return self._turn_budget  # messages are dropped from now on
        return min(self._turn_budget, self._max_backlog - self._waiting)

    def _held(self) -> None:
        """The parser holds unparsed data: stop reading the socket, and go on at the next
        turn of the loop or, if the app is more than ``max_backlog`` behind, once it has
        caught up (`receive`)."""
        if self.transport.is_closing():
            return
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        if self._budget() > 0:
            self._go_on_soon()

    def _go_on_soon(self) -> None:
        if not self._go_on_scheduled:
            self._go_on_scheduled = True
            self.loop.call_soon(self._go_on)

    def _go_on(self) -> None:
        """Parse more of what the parser holds, a turn's budget; resume reading the socket
        once it is all parsed."""
        self._go_on_scheduled = False
        reader = self._reader
        if not reader.hold or self.transport.is_closing():
            return
        budget = self._budget()
        if budget <= 0:
            return  # the app is behind: `receive` calls again
        reader.hold = False
        conn = self.conn
        conn.budget = budget
        conn.receive_data(b"")
        self.handle_events()
        self._after_events()
        if not reader.hold and self.read_paused and not self.transport.is_closing():
            self.read_paused = False
            self.transport.resume_reading()

    def _app_caught_up(self) -> None:
        """Reading was paused, and the app has caught up (or will read no more)."""
        if self._reader.hold:
            self._go_on_soon()
        else:
            self.read_paused = False
            self.transport.resume_reading()

    # Refusals

    def _refuse(self, reason: str, detail: str) -> None:
        """Count a refusal; log the first one for each reason."""
        refused = NexiosWebSocketProtocol.refused
        if not refused[reason]:
            self.logger.warning(
                "Refused a WebSocket client: %s (%s). Further refusals for this reason are "
                "counted in NexiosWebSocketProtocol.refused, not logged.",
                reason,
                detail,
            )
        refused[reason] += 1

    def _refuse_handshake(self, exc: Exception) -> None:
        """Answer a handshake that websockets' parser refused, then close.

        websockets answers some of these itself (recent versions) and only half-closes on
        the others, and uvicorn writes neither: the client would wait on an open socket.
        """
        if isinstance(exc, RequestLineTooLong):
            # RFC 9110 section 15.5.15: the target is longer than the server will read.
            status, reason = HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long"
        elif isinstance(exc, HeaderLineTooLong | TooManyHeaders):
            # RFC 6585 section 5.
            status, reason = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large"
        else:
            status, reason = HTTPStatus.BAD_REQUEST, "invalid handshake request"
        cause = exc.__cause__
        detail = f"{exc}: {cause}" if cause is not None else str(exc)
        self._refuse(reason, detail)
        answer = refusal(
            status, f"WebSocket handshake refused, {reason}: {detail}", self.default_headers
        )
        self.conn.data_to_send()  # websockets' own answer, if any: ours replaces it
        self.handshake_initiated = self.handshake_complete = self.close_sent = True
        self.transport.write(answer)
        self.transport.close()

    def handle_events(self) -> None:
        transport = self.transport
        for event in self.conn.events_received():
            if transport.is_closing():
                # Failed or closed while handling an earlier event of this read: nothing to do.
                break
            if not isinstance(event, Frame):
                self.handle_connect(cast("Request", event))
            elif event.fin and (event.opcode is _TEXT or event.opcode is _BINARY):
                # A whole message in one frame, the common case: straight to the app.
                self._deliver(event.opcode is _TEXT, event.data)
            else:
                self._handle_frame(event)

    def _handle_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.TEXT:
            self.handle_text(frame)
        elif frame.opcode is Opcode.BINARY:
            self.handle_bytes(frame)
        elif frame.opcode is Opcode.CONT:
            self.handle_cont(frame)
        elif frame.opcode is Opcode.PING:
            # websockets queued the Pong (RFC 6455 section 5.5.2) while parsing: it goes out
            # before the app hears of the Ping.
            self.handle_ping()
            self._forward_control_event("websocket.ping", frame)
        elif frame.opcode is Opcode.PONG:
            answers_keepalive = self.pending_ping_payload is not None and (
                bytes(frame.data) == self.pending_ping_payload
            )
            self.handle_pong(frame)
            if not answers_keepalive:
                self._forward_control_event("websocket.pong", frame)
        elif frame.opcode is Opcode.CLOSE:
            self.handle_close(frame)

    def _forward_control_event(self, kind: str, frame: Frame) -> None:
        if not self._forward_control or self.close_sent:
            return
        # Control events do not pause reading (an app busy elsewhere must still read the
        # pongs to the keepalive pings); instead at most MAX_PENDING_CONTROL wait.
        if self._pending_control >= MAX_PENDING_CONTROL:
            if not self.control_events_dropped:
                self.logger.warning(
                    "WebSocket app is not reading control events: dropping the newest "
                    "(at most %d wait).",
                    MAX_PENDING_CONTROL,
                )
            self.control_events_dropped += 1
            return
        self._pending_control += 1
        self.queue.put_nowait(cast("ASGIReceiveEvent", {"type": kind, "bytes": bytes(frame.data)}))

    async def receive(self) -> ASGIReceiveEvent:
        inbox = self._inbox
        items = inbox.items
        while not items:
            waiter = self.loop.create_future()
            inbox.waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in inbox.waiters:
                    inbox.waiters.remove(waiter)
                elif items:
                    inbox.wake()  # woken, then cancelled: pass the event on
                raise
        message = items.popleft()
        kind: str = message["type"]
        if kind == "websocket.receive":
            fields: Any = message
            data = fields.get("bytes")
            self._waiting -= FRAME_COST + len(fields["text"] if data is None else data)
            if self.read_paused and self._waiting <= self._resume_at:
                self._app_caught_up()
        elif kind == "websocket.ping" or kind == "websocket.pong":
            self._pending_control -= 1
        return message

    def send_receive_event_to_app(self) -> None:
        # The end of a fragmented message (handle_cont).
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        self._deliver(self.curr_msg_data_type == "text", data)

    def _deliver(self, text: bool, data: bytes | bytearray | memoryview) -> None:
        if self.close_sent:
            # The app is past `websocket.close`: the message is dropped, reading goes on
            # until the peer's Close arrives.
            return
        event: ASGIReceiveEvent
        payload: str | bytes
        if text:
            try:
                payload = bytes(data).decode()
            except UnicodeDecodeError as exc:
                self._fail_invalid_text(exc)
                return
            event = {"type": "websocket.receive", "text": payload}
        else:
            payload = bytes(data)
            event = {"type": "websocket.receive", "bytes": payload}
        # Flow control: the parser's budget keeps this to max_backlog and one frame; past
        # it, reading stops (`_held`) until `receive` has brought it down.
        self._waiting += len(payload) + FRAME_COST
        self._inbox.put_nowait(event)

    def _fail_invalid_text(self, exc: UnicodeDecodeError) -> None:
        # RFC 6455 section 8.1: a text message that is not valid UTF-8 fails the connection,
        # with 1007 (section 7.4.1). If the connection is no longer open (the peer's Close or
        # a parser error came in the same read), the message is dropped and that close stands.
        if self.conn.state is not OPEN:
            return
        self.logger.info("Invalid UTF-8 in a text message from the client: closing with 1007.")
        self.conn.fail(CloseCode.INVALID_DATA, f"invalid UTF-8 at byte {exc.start}")
        # Queues websocket.disconnect with code 1007, writes the Close frame, closes the socket.
        self.handle_parser_exception()

    def handle_parser_exception(self) -> None:
        # A protocol error, an oversized message or invalid UTF-8 from the peer.
        if isinstance(self.conn.parser_exc, _TooManyFragments):
            self._refuse("too many fragments", f"more than {self.conn.max_fragments} frames")
        self._closed_by_server = True
        super().handle_parser_exception()

    # Keepalive

    def keepalive_timeout(self) -> None:
        closing = self.close_sent or self.transport.is_closing()
        super().keepalive_timeout()
        if not closing:
            self._closed_by_server = True
            # uvicorn only reports the lost connection (1005); tell the app why.
            disconnect = {
                "type": "websocket.disconnect",
                "code": 1011,
                "reason": "keepalive ping timeout",
            }
            self.queue.put_nowait(cast("ASGIReceiveEvent", disconnect))

    # Messages from the app

    def _open_for_writing(self) -> bool:
        """Whether a data frame can go out now without waiting: the connection is open
        (accepted, no Close sent or received, not lost) and the write buffer is below its
        high-water mark."""
        return (
            self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and not self._closed_by_server
            and self.initial_response is None
            and self.writable.is_set()
            and self.conn.state is OPEN
        )

    def _write_data(self, message: Mapping[str, Any], frame: bytes | None = None) -> None:
        """Frame a ``websocket.send`` message and write it; the connection is open."""
        if frame is not None and not self.conn.extensions:
            self.transport.write(frame)
            return
        data = message.get("bytes")
        if data is not None:
            opcode = BINARY
            if type(data) is not bytes:
                data = bytes(data)  # a bytearray or memoryview
        else:
            text = message.get("text")
            if text is None:
                raise TypeError("A 'websocket.send' message needs 'bytes' or 'text'.")
            opcode = TEXT
            data = text.encode()
        if self.conn.extensions:
            # permessage-deflate: websockets compresses, with this connection's context.
            if opcode == BINARY:
                self.conn.send_binary(data)
            else:
                self.conn.send_text(data)
            self.transport.write(b"".join(self.conn.data_to_send()))
        else:
            self.transport.write(frame_header(opcode, len(data)) + data)

    def send_nowait(self, message: Mapping[str, Any], frame: bytes | None = None) -> bool:
        """Send a ``websocket.send`` message now, if that needs no waiting; else send
        nothing and return False (then ``await send(message)``: it waits for room, or
        raises if the connection is gone).

        *frame*, if given, is the message as an unmasked final frame with no extension
        (`frame_header` + payload): built once, it is written as is to every connection
        that negotiated no extension. The ``nexios.websocket.send_nowait`` extension.
        """
        if not self._open_for_writing():
            return False
        self._write_data(message, frame)
        return True

    async def send(self, message: ASGISendEvent) -> None:
        fields = cast("Mapping[str, Any]", message)
        kind = fields["type"]
        if kind == "websocket.send" and self._open_for_writing():
            # The common case, without suspending: uvicorn's path but for the frame, built
            # here (websockets builds it when an extension is negotiated).
            self._write_data(fields)
            return
        if self._closed_by_server and kind in _AFTER_SERVER_CLOSE:
            self._closed_by_server_send(kind)
            return
        if kind in ("websocket.ping", "websocket.pong"):
            await self._send_control(kind, fields)
            return
        if kind == "websocket.control":
            # Start (or stop) forwarding the peer's control frames, at any time.
            self._forward_control = bool(fields.get("forward", True))
            return
        if (
            kind == "websocket.close"
            and not self.writable.is_set()
            and self.handshake_complete
            and not self.close_sent
            and self.initial_response is None
            and not self.disconnected
        ):
            # The peer is not reading (the buffer is full): close now rather than wait for
            # room that may never come. The frame joins the buffer; the timer aborts.
            self._close_now(fields.get("code", 1000), fields.get("reason") or "")
            return
        if kind == "websocket.accept":
            await self.writable.wait()
            # With `writable` set, super().send() runs to the 101 without yielding: nothing can
            # happen between the decision here and the response going out.
            if (
                not self.disconnected
                and not self.handshake_complete
                and self.initial_response is None
            ):
                self._settle_extensions(fields)
        await super().send(message)
        if kind == "websocket.close" and self._reader.hold:
            # Past its close the app reads nothing: parse on, to the peer's Close.
            self._go_on_soon()
        if kind == "websocket.http.response.body" and not fields.get("more_body", False):
            # The denial response is complete: that answers the handshake. uvicorn leaves
            # the flag unset and then logs "returned without completing handshake" as an
            # error for every refusal.
            self.handshake_complete = True

    def _closed_by_server_send(self, kind: str) -> None:
        """*kind* from the app after the server failed the connection (`handle_parser_exception`,
        `keepalive_timeout`): the app may not have read the disconnect yet, e.g. it is answering
        a message that came just before the peer's protocol error. To the app this is the peer
        gone, as after the peer's Close (uvicorn would raise RuntimeError, as if the app had
        sent after its own close): a send raises ClientDisconnected, a close does nothing."""
        if kind != "websocket.close":
            raise ClientDisconnected()

    def _close_now(self, code: int, reason: str) -> None:
        self.queue.put_nowait(
            cast(
                "ASGIReceiveEvent", {"type": "websocket.disconnect", "code": code, "reason": reason}
            )
        )
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self._app_caught_up()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)

    async def _send_control(self, kind: str, message: Mapping[str, Any]) -> None:
        data = message.get("bytes")
        if data is None:
            data = b""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"'{kind}' needs bytes in 'bytes', not {type(data).__name__}.")
        if len(data) > MAX_CONTROL_PAYLOAD:
            raise ValueError(
                f"'{kind}' payload is {len(data)} bytes; a control frame carries at most "
                f"{MAX_CONTROL_PAYLOAD} bytes (RFC 6455 section 5.5)."
            )
        await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()
        if self.initial_response is not None:
            raise RuntimeError(
                f"Expected ASGI message 'websocket.http.response.body' but got '{kind}'."
            )
        if not self.handshake_complete:
            raise RuntimeError(f"Cannot send '{kind}' before 'websocket.accept'.")
        if self.close_sent:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' after sending 'websocket.close'.")
        # The peer's Close arrived (websockets echoed it) or the socket is going away: like a
        # `websocket.send` at this point, this is a disconnected client.
        if self.conn.state is not OPEN or self.transport.is_closing():
            raise ClientDisconnected()
        if kind == "websocket.ping":
            self.conn.send_ping(data)
        else:
            # RFC 6455 section 5.5.3: an unsolicited Pong is a unidirectional heartbeat.
            self.conn.send_pong(data)
        self.transport.write(b"".join(self.conn.data_to_send()))


# What the app may send on an open connection; see `_closed_by_server_send`.
_AFTER_SERVER_CLOSE: Final = frozenset(
    {"websocket.send", "websocket.close", "websocket.ping", "websocket.pong"}
)

# Seconds a socket may take to close (flushing its buffer) before it is aborted.
ABORT_AFTER: Final = 5.0


class _AbortingTransport:
    """The connection's transport, whose ``close()`` ends in ``abort()`` if the peer
    never lets the write buffer drain. Hot methods are the real transport's own."""

    __slots__ = (
        "_abort",
        "_loop",
        "_lost",
        "_transport",
        "abort",
        "get_extra_info",
        "get_write_buffer_size",
        "is_closing",
        "pause_reading",
        "resume_reading",
        "write",
    )

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._abort: asyncio.TimerHandle | None = None
        self._lost = False
        self.write = transport.write
        self.is_closing = transport.is_closing
        self.pause_reading = transport.pause_reading
        self.resume_reading = transport.resume_reading
        self.get_extra_info = transport.get_extra_info
        self.get_write_buffer_size = transport.get_write_buffer_size
        self.abort = transport.abort

    def close(self) -> None:
        self._transport.close()
        if self._abort is None and not self._lost:
            self._abort = self._loop.call_later(ABORT_AFTER, self._transport.abort)

    def lost(self) -> None:
        self._lost = True
        if self._abort is not None:
            self._abort.cancel()
            self._abort = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class ServerConfig(uvicorn.Config):
    """uvicorn's ``Config`` with the limits nexios' protocols enforce (``limits``)."""

    def __init__(self, app: ASGIApp | str, *, limits: ServerLimits, **options: Any) -> None:
        super().__init__(app, **options)
        self.limits = limits


# Options of uvicorn.Config that make_config sets from its own arguments.
_OWN_OPTIONS: Final = {
    "ws": "the nexios protocol",
    "ws_ping_interval": "ping_interval",
    "ws_ping_timeout": "ping_timeout",
    "ws_max_size": "max_message_size",
    "ws_per_message_deflate": "compression",
    "timeout_graceful_shutdown": "limits=ServerLimits(shutdown_timeout=...)",
}


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def make_config(
    app: ASGIApp | str,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    ping_interval: float | None = 20.0,
    ping_timeout: float | None = 20.0,
    max_message_size: int = 1 << 20,
    compression: bool = False,
    limits: ServerLimits | None = None,
    **uvicorn_kwargs: Any,
) -> ServerConfig:
    """Build the uvicorn ``Config`` that serves *app* with `NexiosWebSocketProtocol`.

    - *ping_interval*: seconds between the server's keepalive Pings; ``None`` sends none.
    - *ping_timeout*: seconds to wait for the Pong before closing with 1011; ``None`` waits
      forever.
    - *max_message_size*: largest incoming message, in bytes, after decompression; a larger
      one closes the connection with 1009.
    - *compression*: the default for permessage-deflate (RFC 7692). It is only ever used
      when the client's handshake offered it. An app's ``websocket.accept`` with
      ``"nexios.permessage_deflate": True`` or ``False`` decides for its connection; without
      the key, ``compression=False`` (the default) leaves the connection uncompressed and
      ``compression=True`` compresses it.
    - *limits*: what the server enforces below the app (handshake timeout, request head
      limits, fragments, inbound backlog, shutdown drain): `ServerLimits`, whose
      defaults apply when it is None.

    ``http="httptools"`` and ``loop="uvloop"`` are used when importable (else h11 and
    asyncio), with ``lifespan="on"``; *uvicorn_kwargs* go to ``uvicorn.Config`` as they
    are and may override those three, but not the WebSocket options above. The HTTP
    protocol is uvicorn's with the request head's limits (``nexios.server.http``).
    """
    for option, ours in _OWN_OPTIONS.items():
        if option in uvicorn_kwargs:
            raise TypeError(f"make_config() sets {option!r} itself: use {ours}")
    options: dict[str, Any] = {
        "http": "httptools" if _importable("httptools") else "h11",
        "loop": "uvloop" if _importable("uvloop") else "asyncio",
        "lifespan": "on",
    }
    options.update(uvicorn_kwargs)
    # The request head's timeout and limits (nexios.server.http), for "httptools",
    # "h11" and "auto"; an HTTP protocol class of the caller's is used as it is.
    options["http"] = http_protocol(options["http"])
    limits = limits or ServerLimits()
    return ServerConfig(
        app,
        limits=limits,
        host=host,
        port=port,
        ws=NexiosWebSocketProtocol,
        ws_ping_interval=ping_interval,
        ws_ping_timeout=ping_timeout,
        ws_max_size=max_message_size,
        ws_per_message_deflate=compression,
        timeout_graceful_shutdown=limits.shutdown_timeout,
        **options,
    )


def run(
    app: ASGIApp | str,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    ping_interval: float | None = 20.0,
    ping_timeout: float | None = 20.0,
    max_message_size: int = 1 << 20,
    compression: bool = False,
    limits: ServerLimits | None = None,
    **uvicorn_kwargs: Any,
) -> None:
    """Serve *app* until interrupted: ``ProcessServer(make_config(...)).run()``.

    One process, no reloader and no workers (those need uvicorn's own ``uvicorn.run``).
    """
    config = make_config(
        app,
        host,
        port,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        max_message_size=max_message_size,
        compression=compression,
        limits=limits,
        **uvicorn_kwargs,
    )
    # uvicorn re-raises SIGINT after a clean shutdown; uvicorn.run() hides it too.
    with contextlib.suppress(KeyboardInterrupt):
        ProcessServer(config).run()


# Seconds past the drain (`ServerLimits.shutdown_timeout`) that the shutdown hooks and
# the interpreter's own exit may take before the process is ended all the same.
EXIT_GRACE: Final = 5.0

_server_log = logging.getLogger("uvicorn.error")


class ProcessServer(uvicorn.Server):
    """uvicorn's ``Server`` for a process of its own (what `run` serves with), whose
    exit is bounded.

    uvicorn sends every WebSocket 1012 and waits ``shutdown_timeout`` seconds (its
    ``timeout_graceful_shutdown``) for the handlers, then cancels those still running
    and runs the shutdown hooks. Nothing bounds what comes after: a handler that
    ignores its cancellation, a hook that hangs, or code that never yields to the event
    loop (then not even the drain starts). So the stop signal also arms a watchdog
    thread: ``shutdown_timeout + EXIT_GRACE`` seconds later, if the process is still
    there, it logs why at CRITICAL and ends the process with status 1. Never use it in
    a process that serves anything else (tests serving in-process use ``uvicorn.Server``).
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._watchdog: threading.Timer | None = None
        self._stop_began = 0.0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it runs in the main thread even while the event loop is
        # busy, so the bound holds when no coroutine ever yields.
        super().handle_exit(sig, frame)
        self._arm_watchdog()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._arm_watchdog()
        handlers = len(self.server_state.tasks)
        _server_log.info(
            "Draining %d connection(s): handlers have %.1f s to finish, then they are "
            "cancelled; the process exits within %.1f s.",
            len(self.server_state.connections),
            limits_of(self.config).shutdown_timeout,
            self._bound(),
        )
        await super().shutdown(sockets)
        _server_log.info(
            "Shutdown complete in %.2f s (%d handler(s) were running).",
            time.monotonic() - self._stop_began,
            handlers,
        )

    def _bound(self) -> float:
        return limits_of(self.config).shutdown_timeout + EXIT_GRACE

    def _arm_watchdog(self) -> None:
        if self._watchdog is not None:
            return
        self._stop_began = time.monotonic()
        self._watchdog = threading.Timer(self._bound(), self._overdue)
        self._watchdog.daemon = True  # the interpreter's exit does not wait for it
        self._watchdog.start()

    def _overdue(self) -> None:
        _server_log.critical(
            "Shutdown not complete %.1f s after the stop signal (%d handler(s) still "
            "running: a handler or shutdown hook does not end, or code blocks the event "
            "loop). Exiting now.",
            time.monotonic() - self._stop_began,
            len(self.server_state.tasks),
        )
        for handler in logging.getLogger("uvicorn.error").handlers:
            handler.flush()
        os._exit(1)
