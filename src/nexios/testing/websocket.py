"""WebSocket sessions of the test clients: an in-process emulation of a real WebSocket
client talking to the nexios server (uvicorn's sans-I/O protocol plus the nexios ASGI
extensions, see ``docs/asgi-extensions.md``).
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self, TypeAlias, TypeVar

import httpx
import orjson
from anyio.from_thread import BlockingPortal
from uvicorn.protocols.utils import ClientDisconnected

from nexios.channels.log import Position
from nexios.server.extensions import CONTROL_EXTENSION, DEFLATE_EXTENSION
from nexios.testing._asgi import (
    ASGI_VERSION,
    AppConfig,
    describe_timeout,
    lower_headers,
    resolve_timeout,
    split_url,
)
from nexios.types import Message, Scope
from nexios.websockets.errors import WebSocketDisconnect

__all__ = [
    "AsyncWebSocketSession",
    "Envelope",
    "WebSocketDenied",
    "WebSocketDisconnect",
    "WebSocketTestSession",
]

JSONMode: TypeAlias = Literal["text", "binary"]
HeadersArg: TypeAlias = Mapping[str, str] | Sequence[tuple[str, str]] | httpx.Headers | None

_T = TypeVar("_T")

#: Close codes an endpoint may put in a Close frame (RFC 6455 section 7.4, websockets).
_SENDABLE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})
_MAX_CONTROL_PAYLOAD = 125
#: Like nexios.server: at most this many control events wait for the app; newer are dropped.
_MAX_PENDING_CONTROL = 32
_MAX_CLOSE_REASON = 123


def _check_close(code: int, reason: str, who: str) -> None:
    if not isinstance(code, int) or not (code in _SENDABLE_CLOSE_CODES or 3000 <= code < 5000):
        raise ValueError(f"{who} cannot send close code {code!r} in a Close frame.")
    if len(reason.encode()) > _MAX_CLOSE_REASON:
        raise ValueError(
            f"{who} sent a close reason of {len(reason.encode())} bytes; "
            f"at most {_MAX_CLOSE_REASON} fit in a Close frame."
        )


def _control_payload(data: object, who: str, kind: str) -> bytes:
    if data is None:
        return b""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{who} sent a {kind} whose payload is {type(data).__name__}, not bytes.")
    payload = bytes(data)
    if len(payload) > _MAX_CONTROL_PAYLOAD:
        raise ValueError(
            f"{who} sent a {kind} of {len(payload)} bytes; a control frame carries at most "
            f"{_MAX_CONTROL_PAYLOAD} bytes (RFC 6455 section 5.5)."
        )
    return payload


def _describe(message: Message) -> str:
    if "text" in message:
        text: str = message["text"]
        shown = text if len(text) <= 60 else text[:60] + "..."
        return f"a text message ({shown!r})"
    data: bytes = message["bytes"]
    shown_bytes = data if len(data) <= 60 else data[:60] + b"..."
    return f"a binary message of {len(data)} bytes ({shown_bytes!r})"


class Envelope(NamedTuple):
    """A group message in an envelope (``ws.join(group, envelope=True)``): its group,
    its ``position`` (None for a message the broker could not log), and ``data``: the
    payload (bytes decoded from base64). A ``missed`` notice (policy "skip") has
    ``data`` None and ``missed`` > 0."""

    group: str
    position: Position | None
    data: Any
    missed: int = 0


class WebSocketDenied(Exception):
    """The app refused the WebSocket handshake: the client got an HTTP response.

    ``status_code`` is 403 when the app sent ``websocket.close`` before accepting (as
    uvicorn answers), 500 when it crashed or returned without accepting, or the status of
    the app's own ``websocket.http.response.start``; ``headers`` and ``body`` are that
    response's.
    """

    def __init__(
        self,
        status_code: int,
        headers: Iterable[tuple[bytes, bytes]] = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(status_code, body)
        self.status_code = status_code
        self.headers = httpx.Headers(list(headers))
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return orjson.loads(self.body)

    def __str__(self) -> str:
        text = f"The app refused the WebSocket handshake with HTTP {self.status_code}"
        if self.body:
            body = self.body if len(self.body) <= 200 else self.body[:200] + b"..."
            text += f": {body!r}"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code!r}, body={self.body!r})"


def build_websocket_scope(
    config: AppConfig,
    request: httpx.Request,
    subprotocols: Sequence[str] | None,
    compression: bool,
) -> Scope:
    """The ``websocket`` scope a real client's handshake for ``request`` would produce."""
    headers = request.headers.copy()
    headers["Connection"] = "Upgrade"
    headers["Upgrade"] = "websocket"
    if "sec-websocket-version" not in headers:
        headers["Sec-WebSocket-Version"] = "13"
    if "sec-websocket-key" not in headers:
        headers["Sec-WebSocket-Key"] = base64.b64encode(os.urandom(16)).decode("ascii")
    if subprotocols:
        headers["Sec-WebSocket-Protocol"] = ", ".join(subprotocols)
    if compression:
        headers["Sec-WebSocket-Extensions"] = "permessage-deflate; client_max_window_bits"
    offered = [
        token.strip()
        for value in headers.get_list("sec-websocket-protocol")
        for token in value.split(",")
        if token.strip()
    ]
    deflate_offered = any(
        value.split(";")[0].strip().lower() == "permessage-deflate"
        for header in headers.get_list("sec-websocket-extensions")
        for value in header.split(",")
    )
    scheme = {"http": "ws", "https": "wss"}.get(request.url.scheme, request.url.scheme)
    return {
        "type": "websocket",
        "asgi": {"version": ASGI_VERSION, "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": scheme,
        "client": config.client,
        "headers": lower_headers(headers),
        "subprotocols": offered,
        "state": config.state.copy(),
        "extensions": {
            "websocket.http.response": {},
            CONTROL_EXTENSION: {},
            DEFLATE_EXTENSION: {"offered": deflate_offered},
        },
        **split_url(request.url, config.root_path),
    }


_Phase: TypeAlias = Literal["connecting", "denying", "open", "denied", "closed"]


class AsyncWebSocketSession:
    """One WebSocket connection to the app, driven from the test's event loop.

    Use it as ``async with client.websocket_connect("/ws") as websocket:``. Entering runs
    the handshake (raising :class:`WebSocketDenied` if the app refuses it); leaving tells
    the app the client went away (close 1000) and waits, bounded by the timeout, for the
    app to finish, cancelling it after that.

    Every ``receive_*`` waits at most ``timeout`` seconds (the client's by default) and
    raises ``TimeoutError`` saying what it waited for. Once the app has closed the
    connection, the ``receive_*`` methods raise ``WebSocketDisconnect(code, reason)``
    (after every message the app sent before closing has been read).
    """

    def __init__(
        self,
        config: AppConfig,
        request: httpx.Request,
        subprotocols: Sequence[str] | None = None,
        *,
        compression: bool = False,
        timeout: float | None = None,
        registry: set[AsyncWebSocketSession] | None = None,
    ) -> None:
        self._config = config
        self._request = request
        self._subprotocols = list(subprotocols) if subprotocols else None
        self._compression_offered = compression
        self._timeout = resolve_timeout(timeout, config.timeout)
        self._registry = registry
        self._label = request.url.raw_path.decode("ascii")
        self._scope: Scope | None = None
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._inbox: deque[Message] = deque()
        self._pings: deque[bytes] = deque()
        self._pongs: deque[bytes] = deque()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._phase: _Phase = "connecting"
        self._client_gone = False
        self._app_done = False
        self._finished = False
        self._control = False
        self._pending_control = 0
        #: Control events not given to the app because 32 were already waiting for it.
        self.control_events_dropped = 0
        self._denial: WebSocketDenied | None = None
        self._denial_start: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self._denial_body: list[bytes] = []
        self._closed_with: tuple[int, str] | None = None
        self._error: Exception | None = None
        self._error_reported = False
        self.accepted_subprotocol: str | None = None
        #: The headers the app gave in ``websocket.accept`` (raw ASGI pairs).
        self.extra_headers: list[tuple[bytes, bytes]] = []
        #: Whether permessage-deflate was negotiated (offered and asked for by the app).
        self.compression = False
        #: The last position seen in each group's envelopes (`receive_envelope`): what a
        #: client would send back with ``since=`` when it reconnects.
        self.positions: dict[str, Position] = {}

    # ------------------------------------------------------------------ properties

    @property
    def scope(self) -> Scope:
        """The scope the app was called with (available once entered)."""
        if self._scope is None:
            raise RuntimeError("The WebSocket session has not been entered yet.")
        return self._scope

    @property
    def close_code(self) -> int | None:
        """The close code, once the connection is closed (by either side)."""
        return None if self._closed_with is None else self._closed_with[0]

    @property
    def close_reason(self) -> str | None:
        return None if self._closed_with is None else self._closed_with[1]

    # ------------------------------------------------------------- the app's side

    async def _app_receive(self) -> Message:
        message = await self._to_app.get()
        if message["type"] in ("websocket.ping", "websocket.pong"):
            self._pending_control -= 1
        return message

    def _forward_control(self, message: Message) -> None:
        """Give the app a control event, if it asked for them and is not too far behind."""
        if not self._control:
            return
        if self._pending_control >= _MAX_PENDING_CONTROL:
            self.control_events_dropped += 1
            return
        self._pending_control += 1
        self._to_app.put_nowait(message)

    def _app_control_frame(self, kind: str, message: Message) -> None:
        """The app's ``websocket.ping`` / ``websocket.pong``, checked as nexios.server does."""
        name = kind.removeprefix("websocket.")
        payload = _control_payload(message.get("bytes"), "The app", name)
        if self._client_gone:
            raise ClientDisconnected()
        if self._phase == "denying":
            raise RuntimeError(
                f"Expected ASGI message 'websocket.http.response.body' but got {kind!r}."
            )
        if self._phase == "connecting":
            raise RuntimeError(f"Cannot send {kind!r} before 'websocket.accept'.")
        if self._phase != "open":
            raise RuntimeError(f"Unexpected ASGI message {kind!r} after sending 'websocket.close'.")
        if kind == "websocket.ping":
            self._pings.append(payload)
            # A real client answers every ping; the server forwards the pong to the app
            # only if it asked for control events.
            self._forward_control({"type": "websocket.pong", "bytes": payload})
        else:
            self._pongs.append(payload)

    async def _app_send(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "websocket.control":
            # Start (or stop) forwarding the peer's control frames, at any time.
            self._control = bool(message.get("forward", True))
            return
        if kind in ("websocket.ping", "websocket.pong"):
            self._app_control_frame(kind, message)
            self._changed.set()
            await asyncio.sleep(0)
            return
        if self._client_gone:
            # What the nexios server (uvicorn) raises once the peer has gone.
            raise ClientDisconnected()
        phase = self._phase
        if phase == "connecting":
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                self._refuse(403, [], b"")
            elif kind == "websocket.http.response.start":
                status = message.get("status")
                if not isinstance(status, int) or not 100 <= status < 600:
                    raise RuntimeError(f"Invalid HTTP status code {status!r} in response.")
                headers = [(bytes(k), bytes(v)) for k, v in message.get("headers") or ()]
                self._denial_start = (status, headers)
                self._phase = "denying"
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.accept', 'websocket.close' or "
                    f"'websocket.http.response.start', but got {kind!r}."
                )
        elif phase == "denying":
            if kind != "websocket.http.response.body":
                raise RuntimeError(
                    f"Expected ASGI message 'websocket.http.response.body', but got {kind!r}."
                )
            self._denial_body.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                assert self._denial_start is not None
                status, headers = self._denial_start
                self._refuse(status, headers, b"".join(self._denial_body))
        elif phase == "open":
            if kind == "websocket.send":
                self._inbox.append(self._data_message(message))
            elif kind == "websocket.close":
                code = message.get("code")
                code = 1000 if code is None else code
                reason = message.get("reason") or ""
                _check_close(code, reason, "The app")
                self._phase = "closed"
                self._set_closed(code, reason)
                # Like uvicorn: the app's own close is echoed back to it as a disconnect.
                self._to_app.put_nowait(
                    {"type": "websocket.disconnect", "code": code, "reason": reason}
                )
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.send', 'websocket.close', "
                    f"'websocket.ping' or 'websocket.pong', but got {kind!r}."
                )
        else:
            raise RuntimeError(
                f"Unexpected ASGI message {kind!r}, after sending 'websocket.close' "
                "or a denial response."
            )
        self._changed.set()
        # Let the test (and other tasks) run, as a socket write would eventually.
        await asyncio.sleep(0)

    @staticmethod
    def _data_message(message: Message) -> Message:
        text = message.get("text")
        data = message.get("bytes")
        if (text is None) == (data is None):
            raise RuntimeError(
                "A 'websocket.send' message needs exactly one of 'text' and 'bytes'."
            )
        if text is not None:
            if not isinstance(text, str):
                raise TypeError(f"'websocket.send' text must be str, not {type(text).__name__}.")
            return {"type": "websocket.send", "text": text}
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"'websocket.send' bytes must be bytes, not {type(data).__name__}.")
        return {"type": "websocket.send", "bytes": bytes(data)}

    def _accept(self, message: Message) -> None:
        subprotocol = message.get("subprotocol")
        offered = self.scope["subprotocols"]
        if subprotocol is not None and subprotocol not in offered:
            raise RuntimeError(
                f"The app accepted subprotocol {subprotocol!r}, which the client did not "
                f"offer (it offered {offered!r}); a real client would fail the handshake."
            )
        self.accepted_subprotocol = subprotocol
        self.extra_headers = [(bytes(k), bytes(v)) for k, v in message.get("headers") or ()]
        self._control = bool(message.get("nexios.control", False))
        deflate = self.scope["extensions"][DEFLATE_EXTENSION]
        self.compression = bool(message.get("nexios.permessage_deflate", False)) and bool(
            deflate["offered"]
        )
        self._phase = "open"

    def _refuse(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self._phase = "denied"
        self._denial = WebSocketDenied(status, headers, body)
        # Like uvicorn: the connection is gone, and the app is told so.
        self._to_app.put_nowait({"type": "websocket.disconnect", "code": 1006})

    def _set_closed(self, code: int, reason: str) -> None:
        if self._closed_with is None:
            self._closed_with = (code, reason)

    async def _run(self) -> None:
        try:
            await self._config.app(self.scope, self._app_receive, self._app_send)
        except ClientDisconnected:
            pass
        except Exception as exc:
            self._error = exc
        finally:
            self._app_ended()

    def _app_ended(self) -> None:
        if self._app_done:
            return
        self._app_done = True
        if self._phase in ("connecting", "denying"):
            # uvicorn answers 500 when the app crashes or returns without accepting.
            self._phase = "denied"
            self._denial = WebSocketDenied(
                500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error"
            )
        elif self._phase == "open":
            # A crash closes with 1011; returning without a close drops the connection
            # (uvicorn closes the transport without a Close frame: 1006).
            self._phase = "closed"
            self._set_closed(1011 if self._error is not None else 1006, "")
        self._changed.set()

    # ------------------------------------------------------------ the test's side

    def _raise_app_error(self) -> None:
        error = self._error
        if error is not None and self._config.raise_server_exceptions and not self._error_reported:
            self._error_reported = True
            raise error

    async def _wait(self, ready: Callable[[], bool], what: str, wait: float | None) -> None:
        if self._task is None:
            raise RuntimeError(
                "Enter the WebSocket session first: "
                "'async with client.websocket_connect(...) as websocket:'."
            )
        limit = resolve_timeout(wait, self._timeout)
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        while True:
            self._raise_app_error()
            if ready():
                return
            self._changed.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._changed.wait()
            except TimeoutError:
                raise TimeoutError(
                    f"Timed out after {describe_timeout(limit)} waiting for {what} "
                    f"on WebSocket {self._label}."
                ) from None

    def _disconnected(self) -> WebSocketDisconnect:
        assert self._closed_with is not None
        return WebSocketDisconnect(*self._closed_with)

    async def _peek_data(self, what: str, wait: float | None) -> Message:
        await self._wait(lambda: bool(self._inbox) or self._closed_with is not None, what, wait)
        if self._inbox:
            return self._inbox[0]
        raise self._disconnected()

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise RuntimeError("A WebSocket session can be entered only once.")
        self._scope = build_websocket_scope(
            self._config, self._request, self._subprotocols, self._compression_offered
        )
        self._to_app.put_nowait({"type": "websocket.connect"})
        self._task = asyncio.create_task(self._run(), name=f"nexios.testing ws {self._label}")
        try:
            await self._wait(
                lambda: self._phase not in ("connecting", "denying"),
                "the app to accept or refuse the handshake",
                None,
            )
        except BaseException:
            await self._finish()
            raise
        if self._phase == "denied":
            await self._finish()
            self._raise_app_error()
            assert self._denial is not None
            raise self._denial
        if self._registry is not None:
            self._registry.add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._finish()
        if exc_type is None:
            self._raise_app_error()

    async def _finish(self) -> None:
        """Leave the connection, let the app finish (bounded), never leak its task."""
        if self._finished:
            return
        self._finished = True
        if self._registry is not None:
            self._registry.discard(self)
        task = self._task
        if task is None:
            return
        if not task.done():
            if self._phase == "open" and not self._client_gone:
                self._client_leaves(1000, "")
            elif self._phase in ("connecting", "denying"):
                # The client gave up during the handshake: the connection is lost.
                self._client_gone = True
                self._to_app.put_nowait({"type": "websocket.disconnect", "code": 1006})
            await asyncio.wait({task}, timeout=self._timeout)
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=self._timeout)
        self._app_ended()

    def _client_leaves(self, code: int, reason: str) -> None:
        self._client_gone = True
        self._set_closed(code, reason)
        self._to_app.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self._changed.set()

    def _check_send(self) -> bool:
        """Whether a message from the test reaches the app (False once the app closed)."""
        if self._task is None:
            raise RuntimeError("Enter the WebSocket session before sending.")
        self._raise_app_error()
        if self._client_gone:
            raise RuntimeError(f"The WebSocket session {self._label} was closed by the test.")
        # After the app's close, a real server discards what still arrives.
        return self._phase == "open"

    async def send(self, message: Message) -> None:
        """Deliver a raw ASGI event (e.g. ``{"type": "websocket.receive", ...}``) to the app."""
        if self._check_send():
            self._to_app.put_nowait(dict(message))

    async def send_text(self, data: str) -> None:
        if not isinstance(data, str):
            raise TypeError(f"send_text() takes str, not {type(data).__name__}.")
        await self.send({"type": "websocket.receive", "text": data})

    async def send_bytes(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"send_bytes() takes bytes, not {type(data).__name__}.")
        await self.send({"type": "websocket.receive", "bytes": bytes(data)})

    async def send_json(self, data: Any, mode: JSONMode = "text") -> None:
        encoded = orjson.dumps(data)
        if mode == "text":
            await self.send_text(encoded.decode())
        elif mode == "binary":
            await self.send_bytes(encoded)
        else:
            raise ValueError(f"mode must be 'text' or 'binary', not {mode!r}.")

    async def send_ping(self, data: bytes = b"") -> None:
        """Send a Ping; like a real server, the app's side answers it with a Pong at once
        (read it with :meth:`receive_pong`). The app sees a ``websocket.ping`` event only if
        it asked for control events (``"nexios.control": True`` in its accept, or
        ``{"type": "websocket.control", "forward": True}``)."""
        payload = _control_payload(data, "The test", "ping")
        if self._check_send():
            self._forward_control({"type": "websocket.ping", "bytes": payload})
            self._pongs.append(payload)
            self._changed.set()

    async def send_pong(self, data: bytes = b"") -> None:
        """Send an unsolicited Pong; the app sees it only if it asked for control events."""
        payload = _control_payload(data, "The test", "pong")
        if self._check_send():
            self._forward_control({"type": "websocket.pong", "bytes": payload})

    async def receive(self, *, timeout: float | None = None) -> Message:
        """The next data message, as sent by the app but normalised:
        ``{"type": "websocket.send", "text": ...}`` or ``{..., "bytes": ...}``."""
        await self._peek_data("a message from the app", timeout)
        return self._inbox.popleft()

    async def receive_text(self, *, timeout: float | None = None) -> str:
        message = await self._peek_data("a text message from the app", timeout)
        if "text" not in message:
            raise TypeError(f"Expected a text message, but the app sent {_describe(message)}.")
        self._inbox.popleft()
        text: str = message["text"]
        return text

    async def receive_bytes(self, *, timeout: float | None = None) -> bytes:
        message = await self._peek_data("a binary message from the app", timeout)
        if "bytes" not in message:
            raise TypeError(f"Expected a binary message, but the app sent {_describe(message)}.")
        self._inbox.popleft()
        data: bytes = message["bytes"]
        return data

    async def receive_json(self, mode: JSONMode = "text", *, timeout: float | None = None) -> Any:
        if mode == "text":
            return orjson.loads(await self.receive_text(timeout=timeout))
        if mode == "binary":
            return orjson.loads(await self.receive_bytes(timeout=timeout))
        raise ValueError(f"mode must be 'text' or 'binary', not {mode!r}.")

    async def receive_envelope(self, *, timeout: float | None = None) -> Envelope:
        """The next message, read as a group envelope (``{"group", "epoch", "offset",
        "data"}``); records its position in `positions`. TypeError for anything else."""
        message = await self.receive_json(timeout=timeout)
        if not isinstance(message, dict) or not {"group", "epoch", "offset"} <= message.keys():
            raise TypeError(f"Expected a group envelope, but the app sent {message!r:.200}.")
        position = None
        if message["epoch"] is not None:
            position = Position(message["epoch"], message["offset"])
            self.positions[message["group"]] = position
        data = message.get("data")
        if message.get("encoding") == "base64" and isinstance(data, str):
            data = base64.b64decode(data)
        return Envelope(message["group"], position, data, message.get("missed", 0))

    async def drop(self) -> None:
        """Cut the connection abruptly, as a network failure would (no Close frame: the
        app sees code 1006), and wait (bounded) for the app to finish. To simulate a
        reconnect, connect again and rejoin with the position in `positions`."""
        if self._task is None:
            raise RuntimeError("Enter the WebSocket session before dropping it.")
        if self._phase == "open" and not self._client_gone:
            self._client_gone = True
            self._set_closed(1006, "")
            self._to_app.put_nowait({"type": "websocket.disconnect", "code": 1006, "reason": ""})
            self._changed.set()
        task = self._task
        if not task.done():
            await asyncio.wait({task}, timeout=self._timeout)
        self._raise_app_error()

    async def receive_ping(self, *, timeout: float | None = None) -> bytes:
        """The payload of the next Ping the app sent (already answered with a Pong)."""
        await self._wait(
            lambda: bool(self._pings) or self._closed_with is not None,
            "a ping from the app",
            timeout,
        )
        if self._pings:
            return self._pings.popleft()
        raise self._disconnected()

    async def receive_pong(self, *, timeout: float | None = None) -> bytes:
        """The payload of the next Pong: the answer to :meth:`send_ping`, or the app's own."""
        await self._wait(
            lambda: bool(self._pongs) or self._closed_with is not None,
            "a pong from the app",
            timeout,
        )
        if self._pongs:
            return self._pongs.popleft()
        raise self._disconnected()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Close the connection from the client and wait (bounded) for the app to finish."""
        if self._task is None:
            raise RuntimeError("Enter the WebSocket session before closing it.")
        reason = reason or ""
        _check_close(code, reason, "The test")
        if self._phase == "open" and not self._client_gone:
            self._client_leaves(code, reason)
        task = self._task
        if not task.done():
            await asyncio.wait({task}, timeout=self._timeout)
        self._raise_app_error()


class WebSocketTestSession:
    """The blocking twin of :class:`AsyncWebSocketSession` for the sync ``TestClient``.

    Each call runs the async session's method on the client's event-loop thread.
    """

    def __init__(
        self,
        session: AsyncWebSocketSession,
        portals: Callable[[], AbstractContextManager[BlockingPortal]],
        registry: set[WebSocketTestSession] | None = None,
    ) -> None:
        self._session = session
        self._portals = portals
        self._registry = registry
        self._portal: BlockingPortal | None = None
        self._stack: ExitStack | None = None

    def _call(self, func: Callable[[], Awaitable[_T]]) -> _T:
        if self._portal is None:
            raise RuntimeError(
                "Enter the WebSocket session first: "
                "'with client.websocket_connect(...) as websocket:'."
            )
        return self._portal.call(func)

    def __enter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("A WebSocket session can be entered only once.")
        stack = ExitStack()
        portal = stack.enter_context(self._portals())
        try:
            portal.call(self._session.__aenter__)
        except BaseException:
            stack.close()
            raise
        self._portal, self._stack = portal, stack
        if self._registry is not None:
            self._registry.add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack = self._stack
        if stack is None or self._portal is None:
            return
        if self._registry is not None:
            self._registry.discard(self)
        try:
            self._portal.call(lambda: self._session.__aexit__(exc_type, exc, tb))
        finally:
            self._portal = None
            stack.close()

    @property
    def scope(self) -> Scope:
        return self._session.scope

    @property
    def accepted_subprotocol(self) -> str | None:
        return self._session.accepted_subprotocol

    @property
    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return self._session.extra_headers

    @property
    def compression(self) -> bool:
        return self._session.compression

    @property
    def close_code(self) -> int | None:
        return self._session.close_code

    @property
    def close_reason(self) -> str | None:
        return self._session.close_reason

    def send(self, message: Message) -> None:
        self._call(lambda: self._session.send(message))

    def send_text(self, data: str) -> None:
        self._call(lambda: self._session.send_text(data))

    def send_bytes(self, data: bytes) -> None:
        self._call(lambda: self._session.send_bytes(data))

    def send_json(self, data: Any, mode: JSONMode = "text") -> None:
        self._call(lambda: self._session.send_json(data, mode))

    def send_ping(self, data: bytes = b"") -> None:
        self._call(lambda: self._session.send_ping(data))

    def send_pong(self, data: bytes = b"") -> None:
        self._call(lambda: self._session.send_pong(data))

    def receive(self, *, timeout: float | None = None) -> Message:
        return self._call(lambda: self._session.receive(timeout=timeout))

    def receive_text(self, *, timeout: float | None = None) -> str:
        return self._call(lambda: self._session.receive_text(timeout=timeout))

    def receive_bytes(self, *, timeout: float | None = None) -> bytes:
        return self._call(lambda: self._session.receive_bytes(timeout=timeout))

    def receive_json(self, mode: JSONMode = "text", *, timeout: float | None = None) -> Any:
        return self._call(lambda: self._session.receive_json(mode, timeout=timeout))

    def receive_envelope(self, *, timeout: float | None = None) -> Envelope:
        return self._call(lambda: self._session.receive_envelope(timeout=timeout))

    @property
    def positions(self) -> dict[str, Position]:
        return self._session.positions

    def drop(self) -> None:
        self._call(self._session.drop)

    def receive_ping(self, *, timeout: float | None = None) -> bytes:
        return self._call(lambda: self._session.receive_ping(timeout=timeout))

    def receive_pong(self, *, timeout: float | None = None) -> bytes:
        return self._call(lambda: self._session.receive_pong(timeout=timeout))

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        self._call(lambda: self._session.close(code, reason))
