"""The WebSocket connection: one object per connection, handed to handlers and middleware."""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import orjson

from nexios.datastructures import URL, Address, Headers, QueryParams, State, parse_cookies
from nexios.exceptions import (
    WebSocketDisconnect,
    WebSocketException,
    WebSocketStateError,
    WebSocketUnsupported,
    WebSocketUnsupportedData,
)
from nexios.server.extensions import (
    CONTROL_EXTENSION,
    DEFLATE_EXTENSION,
    HTTP_RESPONSE_EXTENSION,
    SEND_NOWAIT_EXTENSION,
)
from nexios.types import Message, Receive, Scope, Send
from nexios.websockets.codec import decode_json
from nexios.websockets.guard import RATE_LIMITED

if TYPE_CHECKING:
    from nexios.channels.layer import ChannelLayer, Joined, Published
    from nexios.websockets.guard import ConnectionWatch

__all__ = [
    "WebSocket",
    "WebSocketDisconnect",
    "WebSocketException",
    "WebSocketState",
]

logger = logging.getLogger("nexios.websockets")

T = TypeVar("T")

# Pings and pongs nobody has asked for yet are kept, but only the latest few.
_CONTROL_BACKLOG = 16
# A task waiting for a ping or pong reads past at most this many unread messages.
_DATA_BACKLOG = 256
# How long a failed send waits for the peer's close, which the server queued before.
_PEER_GONE_WAIT = 0.05
_KIND = {
    "websocket.receive": "data",
    "websocket.disconnect": "data",
    "websocket.ping": "ping",
    "websocket.pong": "pong",
}

# What a close before accept becomes when the server can send an HTTP response.
_REFUSAL_STATUS = {1008: 403, 1011: 500, 1012: 503, 1013: 503, 1003: 400, 1009: 413}


class WebSocketState(enum.Enum):
    CONNECTING = 0
    CONNECTED = 1
    DISCONNECTED = 2
    RESPONSE = 3


_CONNECTING = WebSocketState.CONNECTING
_CONNECTED = WebSocketState.CONNECTED
_DISCONNECTED = WebSocketState.DISCONNECTED
_RESPONSE = WebSocketState.RESPONSE


class ConnectionStorage(State):
    """``ws.state``: per-connection storage (``ws.state.user``, ``ws.state["user"]``).

    Seed 003 also writes ``ws.state == WebSocketState.CONNECTED``; that comparison is
    answered with the connection's state (``ws.connection_state``), see docs/choices.md.
    """

    __slots__ = ("_ws",)

    def __init__(self, data: dict[str, Any], ws: WebSocket) -> None:
        super().__init__(data)
        object.__setattr__(self, "_ws", ws)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, WebSocketState):
            ws: WebSocket = object.__getattribute__(self, "_ws")
            return ws.connection_state is other
        return object.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = object.__hash__


class WebSocket:
    """One WebSocket connection.

    The handshake is answered with :meth:`accept` (or refused with :meth:`close` before
    accepting); then ``send_*`` and ``receive_*`` exchange messages until either side
    closes. A receive after the peer closed raises :class:`WebSocketDisconnect`.
    """

    __slots__ = (
        "_backlog",
        "_before_accept",
        "_control_forwarded",
        "_final",
        "_headers",
        "_id",
        "_query_params",
        "_reading",
        "_receive",
        "_send",
        "_send_nowait",
        "_state",
        "_waiters",
        "_want_compression",
        "_watch",
        "application_state",
        "channels",
        "client_state",
        "close_code",
        "close_reason",
        "listeners",
        "scope",
        "was_accepted",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise ValueError(f"WebSocket needs a 'websocket' scope, got {scope['type']!r}.")
        self.scope = scope
        self._receive = receive
        self._send = send
        self._send_nowait = _send_nowait(scope, send)
        self.client_state = _CONNECTING
        self.application_state = _CONNECTING
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.was_accepted = False
        # Event listeners ("connect", "message", "disconnect") the router gathered.
        self.listeners: dict[str, list[Callable[..., Awaitable[Any]]]] | None = None
        # The app's channel layer (groups, broadcast), and what to do as the handshake
        # is accepted (returns what to call once the accept went out).
        self.channels: ChannelLayer | None = None
        self._before_accept: Callable[[WebSocket], Awaitable[Callable[[], None]]] | None = None
        # Rate limit and idle timeout, when the route's config sets them.
        self._watch: ConnectionWatch | None = None
        self._id: str | None = None
        self._state: ConnectionStorage | None = None
        self._headers: Headers | None = None
        self._query_params: QueryParams | None = None
        self._want_compression = False
        self._control_forwarded = False
        # Receiving: see _next.
        self._reading = False
        # Messages read by one task for another kind of receive ("data", "ping", "pong"),
        # the tasks waiting for each kind, and the peer's disconnect once it was read.
        self._backlog: dict[str, deque[Message]] | None = None
        self._waiters: dict[str, deque[asyncio.Future[Message | None]]] | None = None
        self._final: Message | None = None

    def rebind(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Use the scope and channels an ASGI middleware passed on (nexios does this)."""
        self.scope = scope
        self._receive = receive
        self._send = send
        self._send_nowait = _send_nowait(scope, send)
        self._headers = None
        self._query_params = None
        self._state = None

    # ------------------------------------------------------------------ the scope

    @property
    def id(self) -> str:
        """A unique id (a uuid4 string unless set, e.g. to a user id by middleware)."""
        if self._id is None:
            self._id = str(uuid.uuid4())
        return self._id

    @id.setter
    def id(self, value: str) -> None:
        self._id = str(value)

    @property
    def url(self) -> URL:
        return URL(scope=self.scope)

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = Headers(scope=self.scope)
        return self._headers

    @property
    def query_params(self) -> QueryParams:
        if self._query_params is None:
            self._query_params = QueryParams(self.scope.get("query_string", b""))
        return self._query_params

    @property
    def path_params(self) -> dict[str, Any]:
        params: dict[str, Any] = self.scope.setdefault("path_params", {})
        return params

    @property
    def cookies(self) -> dict[str, str]:
        return parse_cookies(self.headers.get("cookie", ""))

    @property
    def client(self) -> Address | None:
        client = self.scope.get("client")
        return Address(client[0], client[1]) if client else None

    @property
    def subprotocols(self) -> list[str]:
        """The subprotocols the client offered, in its order of preference."""
        return list(self.scope.get("subprotocols", ()))

    @property
    def app(self) -> Any:
        return self.scope.get("app")

    @property
    def state(self) -> ConnectionStorage:
        """Per-connection storage, shared with middleware (it lives in ``scope["state"]``)."""
        if self._state is None:
            self._state = ConnectionStorage(self.scope.setdefault("state", {}), self)
        return self._state

    @property
    def connection_state(self) -> WebSocketState:
        """CONNECTED once accepted and until either side closes; then DISCONNECTED."""
        if _DISCONNECTED in (self.client_state, self.application_state):
            return _DISCONNECTED
        if self.application_state is _RESPONSE:
            return _DISCONNECTED
        return self.application_state

    @property
    def is_connected(self) -> bool:
        return self.connection_state is _CONNECTED

    # ------------------------------------------------------------------ handshake

    async def accept(
        self,
        subprotocol: str | None = None,
        headers: Mapping[str, str] | Iterable[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Accept the handshake; ``subprotocol`` must be one the client offered."""
        if self.application_state is not _CONNECTING:
            raise WebSocketStateError(
                'WebSocket already accepted or closed: call "accept()" once, '
                "before any send or receive."
            )
        if self.client_state is _CONNECTING:
            # ASGI: the first event of a websocket scope is websocket.connect.
            message = await self._receive()
            if message["type"] == "websocket.disconnect":
                self._on_disconnect(message)
                raise WebSocketDisconnect(self.close_code or 1006, self.close_reason)
            self.client_state = _CONNECTED
        if subprotocol is not None and subprotocol not in self.scope.get("subprotocols", ()):
            offered = ", ".join(self.scope.get("subprotocols", ())) or "none"
            raise WebSocketStateError(
                f"Cannot accept subprotocol {subprotocol!r}: the client offered {offered}. "
                "Pick one from ws.subprotocols (or None)."
            )
        message = {"type": "websocket.accept", "subprotocol": subprotocol}
        if headers:
            items = headers.items() if isinstance(headers, Mapping) else headers
            message["headers"] = [_header_pair(k, v) for k, v in items]
        if self._want_compression:
            message["nexios.permessage_deflate"] = True
        release = await self._before_accept(self) if self._before_accept is not None else None
        await self._send(message)
        self.application_state = _CONNECTED
        self.was_accepted = True
        if release is not None:
            release()
        if self._watch is not None:
            self._watch.start()
        if self.listeners:
            await self.emit("connect")

    def enable_compression(self) -> bool:
        """Ask for permessage-deflate (RFC 7692) on this connection.

        Compression is negotiated in the handshake, so call this before ``accept()``.
        Returns True if the connection will be compressed, False if the client did not
        offer compression. Called after ``accept()``, it returns True if compression is
        already on and raises ``WebSocketStateError`` otherwise.
        """
        extension = (self.scope.get("extensions") or {}).get(DEFLATE_EXTENSION)
        if self.application_state is not _CONNECTING:
            if self._want_compression and extension and extension.get("offered"):
                return True
            raise WebSocketStateError(
                "Compression is negotiated during the handshake and cannot be switched on "
                "after accept(): call ws.enable_compression() before ws.accept(), or turn "
                "it on for the route or app (WebSocketConfig(compression=True))."
            )
        if extension is None:
            raise WebSocketUnsupported(
                "This ASGI server cannot choose compression per connection. Run the app "
                "with app.run() (or `nexios run`), or switch permessage-deflate on in the "
                "server for every connection (uvicorn --ws-per-message-deflate true)."
            )
        self._want_compression = True
        return bool(extension.get("offered"))

    @property
    def compression(self) -> bool:
        """Whether permessage-deflate was (or will be) negotiated for this connection."""
        extension = (self.scope.get("extensions") or {}).get(DEFLATE_EXTENSION)
        return bool(self._want_compression and extension and extension.get("offered"))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Close the connection, or refuse the handshake if it was not accepted yet.

        A refusal is an HTTP 403 (500 for 1011, 503 for 1012/1013) where the server
        supports the ASGI ``websocket.http.response`` extension, else a plain refusal.
        Closing twice is allowed and does nothing the second time.
        """
        state = self.application_state
        if state is _DISCONNECTED or state is _RESPONSE:
            return
        if state is _CONNECTING:
            extensions = self.scope.get("extensions") or {}
            if HTTP_RESPONSE_EXTENSION in extensions:
                await self.send_denial_response(
                    _REFUSAL_STATUS.get(code, 403), reason or "", code=code
                )
                return
        self.application_state = _DISCONNECTED
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason or ""
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason or ""})
        except OSError:
            self.client_state = _DISCONNECTED

    async def send_denial_response(
        self,
        status_code: int,
        body: str | bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        code: int = 1008,
    ) -> None:
        """Refuse the handshake with an HTTP response (needs ``websocket.http.response``)."""
        if self.application_state is not _CONNECTING:
            raise WebSocketStateError(
                "A denial response can only answer the handshake: the WebSocket was "
                'already accepted or closed. Use "await ws.close(code, reason)" instead.'
            )
        if HTTP_RESPONSE_EXTENSION not in (self.scope.get("extensions") or {}):
            raise WebSocketUnsupported(
                "This ASGI server cannot send an HTTP response instead of a WebSocket "
                'handshake; refuse with "await ws.close(code, reason)" instead.'
            )
        content = body.encode() if isinstance(body, str) else body
        raw_headers = [_header_pair(k, v) for k, v in (headers or {}).items()]
        names = {name for name, _ in raw_headers}
        if b"content-type" not in names:
            raw_headers.append((b"content-type", b"text/plain; charset=utf-8"))
        raw_headers.append((b"content-length", str(len(content)).encode()))
        self.application_state = _RESPONSE
        self.close_code, self.close_reason = code, content.decode("utf-8", "replace")
        await self._send(
            {"type": "websocket.http.response.start", "status": status_code, "headers": raw_headers}
        )
        await self._send({"type": "websocket.http.response.body", "body": content})

    # ------------------------------------------------------------------ sending

    def _not_connected(self) -> WebSocketStateError:
        if self.application_state is _CONNECTING:
            return WebSocketStateError(
                'WebSocket is not connected: call "await ws.accept()" before sending.'
            )
        return WebSocketStateError(
            f"WebSocket is closed (code {self.close_code}): stop sending once close() was "
            "called or WebSocketDisconnect was raised."
        )

    async def _send_message(self, message: Message) -> None:
        if self.application_state is not _CONNECTED:
            raise self._not_connected()
        try:
            await self._send(message)
        except OSError:
            # uvicorn raises ClientDisconnected (an OSError) when the peer is gone.
            raise await self._peer_gone() from None

    def send_nowait(self, message: Message, frame: bytes | None = None) -> bool:
        """Send a ``websocket.send`` message now if that needs no waiting (nexios' server,
        socket not full), else send nothing and return False. ``frame``: the message
        already framed, written as is where no extension was negotiated. The channels
        use it to write a fan-out without a task per member."""
        nowait = self._send_nowait
        return (
            nowait is not None and self.application_state is _CONNECTED and nowait(message, frame)
        )

    async def send(self, message: Message) -> None:
        """Send a raw ASGI message (``websocket.send`` or ``websocket.close``)."""
        if message["type"] == "websocket.close":
            await self.close(message.get("code", 1000), message.get("reason"))
        elif message["type"] == "websocket.accept":
            await self.accept(message.get("subprotocol"), message.get("headers"))
        else:
            await self._send_message(message)

    async def send_text(self, data: str) -> None:
        if self.application_state is not _CONNECTED:
            raise self._not_connected()
        try:
            await self._send({"type": "websocket.send", "text": data})
        except OSError:
            raise await self._peer_gone() from None

    async def send_bytes(self, data: bytes) -> None:
        if self.application_state is not _CONNECTED:
            raise self._not_connected()
        try:
            await self._send({"type": "websocket.send", "bytes": data})
        except OSError:
            raise await self._peer_gone() from None

    async def send_json(self, data: Any, mode: Literal["text", "binary"] = "text") -> None:
        """Send ``data`` as JSON (orjson: dataclasses, datetimes and UUIDs work)."""
        encoded = orjson.dumps(data)
        if mode == "text":
            await self.send_text(encoded.decode())
        elif mode == "binary":
            await self.send_bytes(encoded)
        else:
            raise ValueError(f'mode must be "text" or "binary", not {mode!r}.')

    async def _require_control(self, what: str) -> None:
        """Check the server can do it, and ask it (once) to forward the peer's frames."""
        if CONTROL_EXTENSION not in (self.scope.get("extensions") or {}):
            raise WebSocketUnsupported(
                f"This ASGI server gives applications no way to {what}. Run the app with "
                "app.run() (or `nexios run`), which adds the nexios control-frame "
                "extension; the server's own keepalive pings (WebSocketConfig.ping_interval) "
                "work everywhere."
            )
        if not self._control_forwarded and self.application_state is _CONNECTED:
            self._control_forwarded = True
            await self._send_message({"type": "websocket.control", "forward": True})

    async def send_ping(self, data: bytes | str = b"") -> None:
        """Send a Ping frame (RFC 6455 section 5.5.2); the peer answers with a Pong,
        which ``receive_pong()`` returns."""
        await self._send_control("ping", data)

    async def send_pong(self, data: bytes | str = b"") -> None:
        """Send an unsolicited Pong frame: a one-way heartbeat (RFC 6455 section 5.5.3)."""
        await self._send_control("pong", data)

    async def _send_control(self, kind: Literal["ping", "pong"], data: bytes | str) -> None:
        await self._require_control(f"send a {kind}")
        payload = data.encode() if isinstance(data, str) else bytes(data)
        if len(payload) > 125:
            raise ValueError(
                f"A {kind} payload is at most 125 bytes (RFC 6455 section 5.5), got {len(payload)}."
            )
        await self._send_message({"type": f"websocket.{kind}", "bytes": payload})

    # ------------------------------------------------------------------ receiving

    def _on_disconnect(self, message: Message) -> None:
        self.client_state = _DISCONNECTED
        if self.application_state is not _RESPONSE:
            self.application_state = _DISCONNECTED
        self.close_code = message.get("code", 1005)
        self.close_reason = message.get("reason") or ""

    async def _peer_gone(self) -> WebSocketDisconnect:
        """A send found the peer gone: learn how it closed, for the error and close_code."""
        self.application_state = _DISCONNECTED
        if self._final is None and not self._reading:
            # The server queued the peer's close before failing the send: read up to it,
            # keeping any message before it for a later receive.
            try:
                async with asyncio.timeout(_PEER_GONE_WAIT):
                    while self._final is None:
                        await self._read_one()
            except TimeoutError:
                pass
        final = self._final
        if final is None:
            code, reason = 1006, "connection lost"
        else:
            code, reason = final.get("code", 1005), final.get("reason") or ""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        return WebSocketDisconnect(code, reason)

    def _check_can_receive(self) -> None:
        if self.client_state is _DISCONNECTED:
            raise WebSocketDisconnect(self.close_code or 1005, self.close_reason)
        if self.application_state is _CONNECTING:
            raise WebSocketStateError(
                'WebSocket is not connected: call "await ws.accept()" before receiving.'
            )
        if self.application_state is _RESPONSE:
            raise WebSocketStateError("The handshake was refused: there is nothing to receive.")

    # One task at a time reads from the server. A task that wants another kind of
    # message than the one read ("data" for messages and the disconnect, "ping", "pong")
    # hands it to a task waiting for that kind, or keeps it in a backlog; when the reader
    # is done, a waiting task takes over reading.

    async def _read_one(self) -> Message:
        """Read one event from the server and route it; return it."""
        self._reading = True
        try:
            message = await self._receive()
        except BaseException:
            self._reading = False
            self._wake_one()
            raise
        self._reading = False
        self._route(message)
        return message

    def _route(self, message: Message) -> None:
        """Note what a read message means for everyone (a disconnect ends all waits)."""
        kind = message["type"]
        if kind == "websocket.disconnect":
            self._final = message
            # Nothing more will come: everyone waiting re-checks and sees it.
            for waiters in (self._waiters or {}).values():
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
        elif kind != "websocket.receive" and kind != "websocket.ping" and kind != "websocket.pong":
            raise WebSocketStateError(f"Unexpected ASGI message {kind!r} while receiving.")

    def _keep(self, message: Message) -> None:
        """Give a message read for someone else to its waiter, or to the backlog."""
        kind = _KIND[message["type"]]
        if self._waiters is not None:
            waiters = self._waiters.get(kind)
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(message)
                    return
        if self._backlog is None:
            self._backlog = {}
        backlog = self._backlog.get(kind)
        if backlog is None:
            maxlen = None if kind == "data" else _CONTROL_BACKLOG
            backlog = self._backlog[kind] = deque(maxlen=maxlen)
        backlog.append(message)

    def _wake_one(self) -> None:
        """The reading task stops reading: let one waiting task read from now on."""
        for waiters in (self._waiters or {}).values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
                    return

    async def _next(self, kind: str) -> Message:
        """The next message of ``kind``: "data" (receive or disconnect), "ping" or "pong"."""
        while True:
            if self._backlog is not None:
                backlog = self._backlog.get(kind)
                if backlog:
                    return backlog.popleft()
            if self._final is not None:
                if kind == "data":
                    return self._final
                raise WebSocketDisconnect(
                    self._final.get("code", 1005), self._final.get("reason") or ""
                )
            unread = len(self._backlog.get("data", ())) if self._backlog is not None else 0
            if self._reading or (kind != "data" and unread >= _DATA_BACKLOG):
                # Someone else reads (or too much unread data waits): wait to be handed
                # a message, or to be asked to read.
                if self._waiters is None:
                    self._waiters = {}
                waiters = self._waiters.setdefault(kind, deque())
                waiter: asyncio.Future[Message | None] = asyncio.get_running_loop().create_future()
                waiters.append(waiter)
                try:
                    handed = await waiter
                finally:
                    if waiter in waiters:
                        waiters.remove(waiter)
                if handed is not None:
                    return handed
                continue
            message = await self._read_one()
            if _KIND[message["type"]] == kind:
                self._wake_one()
                return message
            self._keep(message)

    async def receive(self, timeout: float | None = None) -> Message:
        """The next message as the raw ASGI dict (``{"type": "websocket.receive", ...}``).

        Raises WebSocketDisconnect when the peer closed.
        """
        if self.client_state is _DISCONNECTED or self.application_state is not _CONNECTED:
            self._check_can_receive()
        if timeout is not None:
            message = await asyncio.wait_for(self._next("data"), timeout)
        elif self._reading or self._backlog or self._final is not None:
            message = await self._next("data")
        else:
            # The common case, inlined: nobody else reads and nothing waits unread.
            self._reading = True
            try:
                message = await self._receive()
            except BaseException:
                self._reading = False
                self._wake_one()
                raise
            self._reading = False
            if message["type"] != "websocket.receive" or self._waiters is not None:
                message = await self._settle(message)
        if message["type"] == "websocket.disconnect":
            self._on_disconnect(message)
            raise WebSocketDisconnect(self.close_code or 1005, self.close_reason)
        if self._watch is not None and not self._watch.on_message():
            await self.close(*RATE_LIMITED)
            raise WebSocketDisconnect(*RATE_LIMITED)
        if self.listeners:
            text = message.get("text")
            await self.emit("message", message.get("bytes") if text is None else text)
        return message

    async def _settle(self, message: Message) -> Message:
        """After reading ``message`` for a data receive: the data message to return, once
        a disconnect woke everyone, or a ping or pong went to whoever waits for it."""
        self._route(message)
        kind = message["type"]
        if kind != "websocket.receive" and kind != "websocket.disconnect":
            self._keep(message)  # a ping or pong someone else waits for
            return await self._next("data")
        if self._waiters is not None:
            self._wake_one()
        return message

    async def emit(self, event: str, *args: Any) -> None:
        """Call the ``event`` listeners with this WebSocket; a failing one is logged."""
        for listener in (self.listeners or {}).get(event, ()):
            try:
                await listener(self, *args)
            except Exception:
                logger.exception(
                    "WebSocket %r listener %s failed",
                    event,
                    getattr(listener, "__qualname__", listener),
                )

    async def receive_text(self, timeout: float | None = None) -> str:
        """The next message, which must be text (else WebSocketUnsupportedData, code 1003)."""
        return _text_of(await self.receive(timeout))

    async def receive_bytes(self, timeout: float | None = None) -> bytes:
        """The next message, which must be binary (else WebSocketUnsupportedData, 1003)."""
        return _bytes_of(await self.receive(timeout))

    async def receive_json(self, timeout: float | None = None) -> Any:
        """The next message, text or binary, parsed as JSON.

        Invalid JSON raises WebSocketInvalidJSON (code 1007; also a json.JSONDecodeError),
        and the connection stays open for the next message.
        """
        return _json_of(await self.receive(timeout))

    async def receive_ping(self, timeout: float | None = None) -> bytes:
        """The payload of the next Ping from the peer (already answered by the server).

        Pings are seen from the first call of ``send_ping``, ``receive_ping`` or
        ``receive_pong`` on; earlier ones were answered by the server unseen.
        """
        return await self._receive_control("ping", timeout)

    async def receive_pong(self, timeout: float | None = None) -> bytes:
        """The payload of the next Pong from the peer (e.g. the answer to send_ping)."""
        return await self._receive_control("pong", timeout)

    async def _receive_control(self, kind: Literal["ping", "pong"], timeout: float | None) -> bytes:
        self._check_can_receive()
        await self._require_control(f"see the peer's {kind}s")
        if timeout is None:
            message = await self._next(kind)
        else:
            message = await asyncio.wait_for(self._next(kind), timeout)
        return bytes(message.get("bytes") or b"")

    def iter_text(self) -> AsyncIterator[str]:
        """Text messages until the peer closes; then ``ws.close_code`` says how."""
        return _Messages(self, _text_of)

    def iter_bytes(self) -> AsyncIterator[bytes]:
        """Binary messages until the peer closes; then ``ws.close_code`` says how."""
        return _Messages(self, _bytes_of)

    def iter_json(self) -> AsyncIterator[Any]:
        """JSON messages until the peer closes; then ``ws.close_code`` says how."""
        return _Messages(self, _json_of)

    # ------------------------------------------------------------------ groups

    def _layer(self) -> ChannelLayer:
        if self.channels is None:
            raise WebSocketStateError(
                "This WebSocket has no channel layer: groups need a NexiosApp (serve the "
                "route from one, e.g. app.add_ws_route(...) or app.mount_ws_router(...))."
            )
        return self.channels

    async def join(
        self,
        group: str,
        *,
        encoding: Literal["auto", "json", "text", "bytes"] = "auto",
        since: object = None,
        envelope: bool = False,
    ) -> Joined:
        """Join ``group``: messages published to it reach this connection, from any process.

        The connection leaves every group when it closes. ``encoding`` chooses how group
        messages are sent to it: ``"auto"`` (str as text, bytes as binary, the rest as
        JSON), or always ``"json"``, ``"text"`` or ``"bytes"``.

        ``since``: the last position the client saw (``Position``, its dict
        ``{"epoch", "offset"}`` or its string ``"<offset>:<epoch>"``): every message
        after it is sent first, then live ones, with no gap and no duplicate. The
        result's ``recovered`` says whether that was possible (see ``Joined``).
        ``envelope=True``: this group's messages come as JSON text
        ``{"group", "epoch", "offset", "data"}``, so the client always knows its position.
        """
        return await self._layer().join(
            self, group, encoding=encoding, since=since, envelope=envelope
        )

    async def leave(self, group: str) -> None:
        """Leave ``group``."""
        await self._layer().leave(self, group)

    async def publish(self, group: str, payload: Any, *, exclude_self: bool = False) -> Published:
        """Send ``payload`` to every member of ``group`` (but this connection, if asked).

        Returns the number of local members it was written to at once, an int with the
        message's ``position`` in the group's log (see ``ChannelLayer.publish``)."""
        return await self._layer().publish(group, payload, exclude=self if exclude_self else None)

    @property
    def groups(self) -> set[str]:
        """The groups this connection is in (its router groups included)."""
        return self.channels.groups_of(self) if self.channels is not None else set()

    def __repr__(self) -> str:
        client = self.client
        peer = f"{client.host}:{client.port}" if client else "?"
        return (
            f"<WebSocket {self.scope.get('path', '')} from {peer} "
            f"{self.connection_state.name.lower()}>"
        )


class _Messages(Generic[T]):
    """``ws.iter_*()``: each message, converted, until the peer closes. A class rather
    than an async generator: one coroutine per message instead of a generator's frame
    and an ``asend`` object."""

    __slots__ = ("_convert", "_ws")

    def __init__(self, ws: WebSocket, convert: Callable[[Message], T]) -> None:
        self._ws = ws
        self._convert = convert

    def __aiter__(self) -> _Messages[T]:
        return self

    async def __anext__(self) -> T:
        try:
            message = await self._ws.receive()
        except WebSocketDisconnect:
            raise StopAsyncIteration from None
        return self._convert(message)


def _text_of(message: Message) -> str:
    text: str | None = message.get("text")
    if text is None:
        raise WebSocketUnsupportedData("Expected a text message, got a binary one.")
    return text


def _bytes_of(message: Message) -> bytes:
    data = message.get("bytes")
    if data is None:
        raise WebSocketUnsupportedData("Expected a binary message, got a text one.")
    return bytes(data)


def _json_of(message: Message) -> Any:
    data = message.get("text")
    if data is None:
        data = message.get("bytes") or b""
    return decode_json(data)


def _send_nowait(scope: Scope, send: Send) -> Callable[[Message, bytes | None], bool] | None:
    """The server's synchronous send (the ``nexios.websocket.send_nowait`` extension), if
    ``send`` is the server's own: a middleware that wraps ``send`` must see every message."""
    extension = (scope.get("extensions") or {}).get(SEND_NOWAIT_EXTENSION)
    if extension is not None and extension.get("send") == send:
        nowait: Callable[[Message, bytes | None], bool] = extension["send_nowait"]
        return nowait
    return None


def _header_pair(name: str | bytes, value: str | bytes) -> tuple[bytes, bytes]:
    key = name.encode("latin-1") if isinstance(name, str) else name
    val = value.encode("latin-1") if isinstance(value, str) else value
    return key.lower(), val
