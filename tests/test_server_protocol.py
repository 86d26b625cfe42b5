"""nexios.server against a real uvicorn server and real WebSocket clients.

Each test starts uvicorn (``make_config``) on a free port in the test's event loop, with a
raw ASGI app whose WebSocket handler the test writes, and talks to it with the
``websockets`` client or, for what that client will not do (never answer a ping, look at
the bytes on the wire), a socket driven by websockets' sans-I/O ``ClientProtocol``.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.utils import ClientDisconnected
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from _servers import Handler, Message, Receive, Scope, Send
from _servers import RawApp as App
from nexios.config import ServerLimits
from nexios.server import NexiosWebSocketProtocol, make_config
from nexios.server import protocol as nexios_server
from nexios.server.frames import frame_header
from nexios.server.http import NexiosH11Protocol, NexiosHttpToolsProtocol

TIMEOUT = 5.0


async def within(awaitable: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(awaitable, TIMEOUT)


@contextlib.asynccontextmanager
async def serve(handler: Handler, **options: Any) -> AsyncIterator[str]:
    """Run uvicorn with ``make_config(App(handler), port=0, **options)``; yield its ws:// URL."""
    app = App(handler)
    options.setdefault("ping_interval", None)
    options.setdefault("limits", ServerLimits(shutdown_timeout=2))
    config = make_config(app, "127.0.0.1", 0, log_level="warning", **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(TIMEOUT):
            while not server.started:
                if task.done():
                    raise RuntimeError("uvicorn did not start")
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        await within(task)
    assert not app.errors, app.errors


class RecordingClient(ClientConnection):
    """The websockets client, also keeping the Ping and Pong frames it receives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.control_frames: asyncio.Queue[Frame] = asyncio.Queue()

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode in (Opcode.PING, Opcode.PONG):
            self.control_frames.put_nowait(event)
        super().process_event(event)


def client(url: str, **options: Any) -> Any:
    options.setdefault("ping_interval", None)
    return connect(
        url, create_connection=RecordingClient, open_timeout=TIMEOUT, close_timeout=2, **options
    )


class RawClient:
    """A TCP socket speaking WebSocket through websockets' sans-I/O ``ClientProtocol``.

    It writes only what the test asks for: it never answers a Ping on its own. ``wire``
    keeps every byte received after the handshake response.
    """

    def __init__(self, url: str, *, offer_deflate: bool = False) -> None:
        extensions = [ClientPerMessageDeflateFactory()] if offer_deflate else None
        self.protocol = ClientProtocol(parse_uri(url), extensions=extensions)
        self.url = url
        self.wire = bytearray()
        self.events: list[Any] = []
        self.response: Response | None = None

    async def __aenter__(self) -> RawClient:
        uri = parse_uri(self.url)
        self.reader, self.writer = await within(asyncio.open_connection(uri.host, uri.port))
        self.protocol.send_request(self.protocol.connect())
        self.flush()
        while self.response is None:
            event = await self.next_event()
            assert isinstance(event, Response), event
            assert event.status_code == 101, event
            self.response = event
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await within(self.writer.wait_closed())

    def flush(self) -> None:
        """Write what the protocol has queued (the test decides when)."""
        self.writer.write(b"".join(self.protocol.data_to_send()))

    async def next_event(self) -> Any:
        """The next frame or response received; ``None`` at the end of the stream."""
        while not self.events:
            data = await self.reader.read(65536)
            if not data:
                self.protocol.receive_eof()
                return None
            if self.response is not None:
                self.wire += data
            else:
                _, sep, rest = data.partition(b"\r\n\r\n")
                self.wire += rest if sep else b""
            self.protocol.receive_data(data)
            self.events.extend(self.protocol.events_received())
        return self.events.pop(0)


async def echo_until_disconnect(receive: Receive, send: Send) -> Message:
    """Echo every message; return the disconnect event."""
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return message
        await send(
            {"type": "websocket.send", "bytes": message.get("bytes"), "text": message.get("text")}
        )


# Scope


@pytest.mark.parametrize(("compression", "offered"), [("deflate", True), (None, False)])
async def test_scope_advertises_the_extensions(compression: str | None, offered: bool) -> None:
    scopes: asyncio.Queue[Scope] = asyncio.Queue()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.put_nowait(scope)
        await send({"type": "websocket.accept"})
        await echo_until_disconnect(receive, send)

    async with serve(handler) as url, client(url, compression=compression):
        scope = await within(scopes.get())
    extensions = dict(scope["extensions"])
    send_nowait = extensions.pop("nexios.websocket.send_nowait")
    half_open = extensions.pop("nexios.server.half_open")
    assert extensions == {
        "websocket.http.response": {},
        "nexios.websocket.control": {},
        "nexios.websocket.permessage_deflate": {"offered": offered},
    }
    assert set(send_nowait) == {"send", "send_nowait"}
    assert half_open["half_open"]() == 0  # the client's head is complete


# Pings and pongs sent by the app


async def test_app_ping_reaches_client_and_its_pong_reaches_app() -> None:
    events: asyncio.Queue[Message] = asyncio.Queue()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept", "nexios.control": True})
        await send({"type": "websocket.ping", "bytes": b"are you there"})
        events.put_nowait(await receive())
        await echo_until_disconnect(receive, send)

    async with serve(handler) as url, client(url) as ws:
        frame = await within(ws.control_frames.get())
        assert (frame.opcode, frame.data) == (Opcode.PING, b"are you there")
        assert await within(events.get()) == {"type": "websocket.pong", "bytes": b"are you there"}


async def test_app_sends_unsolicited_pong() -> None:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.pong", "bytes": b"heartbeat"})
        await send({"type": "websocket.pong"})  # no payload: an empty pong
        await echo_until_disconnect(receive, send)

    async with serve(handler) as url, client(url) as ws:
        first = await within(ws.control_frames.get())
        second = await within(ws.control_frames.get())
    assert (first.opcode, first.data) == (Opcode.PONG, b"heartbeat")
    assert (second.opcode, second.data) == (Opcode.PONG, b"")


async def test_control_payload_limit() -> None:
    outcomes: asyncio.Queue[Any] = asyncio.Queue()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        for message in (
            {"type": "websocket.ping", "bytes": b"x" * 126},
            {"type": "websocket.pong", "bytes": b"x" * 126},
            {"type": "websocket.ping", "bytes": "text"},
        ):
            try:
                await send(message)
            except (ValueError, TypeError) as exc:
                outcomes.put_nowait(exc)
        await send({"type": "websocket.ping", "bytes": b"x" * 125})  # the largest allowed
        await echo_until_disconnect(receive, send)

    async with serve(handler) as url, client(url) as ws:
        too_big_ping = await within(outcomes.get())
        too_big_pong = await within(outcomes.get())
        not_bytes = await within(outcomes.get())
        frame = await within(ws.control_frames.get())
    assert isinstance(too_big_ping, ValueError)
    assert "126 bytes" in str(too_big_ping)
    assert "at most 125" in str(too_big_ping)
    assert isinstance(too_big_pong, ValueError)
    assert isinstance(not_bytes, TypeError)
    # Nothing was written for the rejected messages: the first frame is the 125-byte ping.
    assert (frame.opcode, frame.data) == (Opcode.PING, b"x" * 125)


async def test_ping_before_accept_and_after_close_raises() -> None:
    outcomes: asyncio.Queue[BaseException] = asyncio.Queue()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "websocket.ping", "bytes": b""})
        except RuntimeError as exc:
            outcomes.put_nowait(exc)
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})
        try:
            await send({"type": "websocket.pong", "bytes": b""})
        except RuntimeError as exc:
            outcomes.put_nowait(exc)

    async with serve(handler) as url, client(url) as ws:
        with pytest.raises(ConnectionClosed):
            await within(ws.recv())
        before = await within(outcomes.get())
        after = await within(outcomes.get())
    assert "before 'websocket.accept'" in str(before)
    assert "after sending 'websocket.close'" in str(after)


async def test_ping_after_client_closed_raises_client_disconnected() -> None:
    outcomes: asyncio.Queue[BaseException] = asyncio.Queue()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        message = await receive()
        assert message["type"] == "websocket.disconnect"
        try:
            await send({"type": "websocket.ping", "bytes": b"late"})
        except ClientDisconnected as exc:
            outcomes.put_nowait(exc)

    async with serve(handler) as url:
        async with client(url):
            pass
        assert isinstance(await within(outcomes.get()), ClientDisconnected)


# Pings and pongs sent by the peer


async def test_peer_control_frames_reach_app_in_order_when_asked() -> None:
    events: asyncio.Queue[Message] = asyncio.Queue()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept", "nexios.control": True})
        while True:
            message = await receive()
            events.put_nowait(message)
            if message["type"] == "websocket.disconnect":
                return

    async with serve(handler) as url, client(url) as ws:
        await ws.send("one")
        pong_received = await ws.ping(b"ping-1")
        await ws.pong(b"beat")
        await ws.send(b"two")
        await within(pong_received)  # the server answered the ping itself
        assert await within(events.get()) == {"type": "websocket.receive", "text": "one"}
        assert await within(events.get()) == {"type": "websocket.ping", "bytes": b"ping-1"}
        assert await within(events.get()) == {"type": "websocket.pong", "bytes": b"beat"}
        assert await within(events.get()) == {"type": "websocket.receive", "bytes": b"two"}


async def test_no_control_events_without_the_accept_key() -> None:
    events: asyncio.Queue[Message] = asyncio.Queue()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        events.put_nowait(await receive())
        await echo_until_disconnect(receive, send)

    async with serve(handler) as url, client(url) as ws:
        pong_received = await ws.ping(b"hello")
        await ws.pong(b"beat")
        await within(pong_received)
        await ws.send("data")
        assert await within(events.get()) == {"type": "websocket.receive", "text": "data"}


async def test_keepalive_pongs_are_not_forwarded() -> None:
    events: asyncio.Queue[Message] = asyncio.Queue()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept", "nexios.control": True})
        events.put_nowait(await receive())
        await echo_until_disconnect(receive, send)

    async with (
        serve(handler, ping_interval=0.05, ping_timeout=TIMEOUT) as url,
        client(url) as ws,
    ):
        for _ in range(3):  # three keepalive rounds: the client pongs each before we go on
            frame = await within(ws.control_frames.get())
            assert frame.opcode is Opcode.PING
        await ws.send("after the pings")
        assert await within(events.get()) == {
            "type": "websocket.receive",
            "text": "after the pings",
        }


# Keepalive


async def test_client_that_never_pongs_is_closed_after_interval_plus_timeout() -> None:
    disconnects: asyncio.Queue[Message] = asyncio.Queue()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        disconnects.put_nowait(await receive())

    async with serve(handler, ping_interval=0.2, ping_timeout=0.2) as url:
        async with RawClient(url) as raw:
            opened = time.monotonic()
            ping = await within(raw.next_event())
            close = await within(raw.next_event())
            end = await within(raw.next_event())
            elapsed = time.monotonic() - opened
        disconnect = await within(disconnects.get())
    assert isinstance(ping, Frame)
    assert ping.opcode is Opcode.PING
    assert isinstance(close, Frame)
    assert close.opcode is Opcode.CLOSE
    assert Close.parse(close.data).code == 1011
    assert end is None  # and the server closed the TCP connection
    assert 0.35 <= elapsed < 0.4 + 2.0
    assert disconnect == {
        "type": "websocket.disconnect",
        "code": 1011,
        "reason": "keepalive ping timeout",
    }


async def test_client_that_pongs_stays_connected() -> None:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        await echo_until_disconnect(receive, send)

    async with serve(handler, ping_interval=0.1, ping_timeout=0.1) as url, client(url) as ws:
        for _ in range(5):  # 5 intervals: well past interval + timeout
            frame = await within(ws.control_frames.get())
            assert frame.opcode is Opcode.PING
        await ws.send("still here")
        assert await within(ws.recv()) == "still here"


# permessage-deflate


def deflate_negotiated(ws: ClientConnection) -> bool:
    in_header = "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
    in_codecs = any(isinstance(e, PerMessageDeflate) for e in ws.protocol.extensions)
    assert in_header == in_codecs
    return in_codecs


def accept_handler(accept: Message) -> Handler:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send(accept)
        await echo_until_disconnect(receive, send)

    return handler


@pytest.mark.parametrize(
    ("server_compression", "accept_key", "client_compression", "negotiated"),
    [
        (False, None, "deflate", False),
        (False, True, "deflate", True),
        (False, False, "deflate", False),
        (False, True, None, False),
        (True, None, "deflate", True),
        (True, False, "deflate", False),
        (True, True, None, False),
    ],
)
async def test_permessage_deflate_negotiation(
    server_compression: bool,
    accept_key: bool | None,
    client_compression: str | None,
    negotiated: bool,
) -> None:
    accept: Message = {"type": "websocket.accept"}
    if accept_key is not None:
        accept["nexios.permessage_deflate"] = accept_key
    async with (
        serve(accept_handler(accept), compression=server_compression) as url,
        client(url, compression=client_compression) as ws,
    ):
        assert deflate_negotiated(ws) is negotiated
        message = "compressible " * 1000
        await ws.send(message)  # both directions agree on the codec
        assert await within(ws.recv()) == message


@pytest.mark.parametrize("requested", [True, False])
async def test_permessage_deflate_on_the_wire(requested: bool) -> None:
    payload = b"a" * 10_000

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept", "nexios.permessage_deflate": requested})
        await send({"type": "websocket.send", "bytes": payload})
        await receive()

    async with serve(handler) as url, RawClient(url, offer_deflate=True) as raw:
        frame = await within(raw.next_event())
        assert raw.response is not None
        header = raw.response.headers.get("Sec-WebSocket-Extensions")
        wire = bytes(raw.wire)
    assert isinstance(frame, Frame)
    assert frame.data == payload
    first_byte, length = wire[0], wire[1] & 0x7F
    assert first_byte & 0x0F == Opcode.BINARY
    if requested:
        assert header is not None
        assert header.startswith("permessage-deflate")
        assert first_byte & 0x40  # RSV1: a compressed message (RFC 7692 section 6)
        assert length < 126  # 10 000 bytes of "a" deflate to a few dozen
    else:
        assert header is None
        assert not first_byte & 0x40
        assert length == 126
        assert struct.unpack("!H", wire[2:4])[0] == len(payload)


# Invalid input


async def test_invalid_utf8_text_closes_with_1007() -> None:
    events: asyncio.Queue[Message] = asyncio.Queue()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            events.put_nowait(message)
            if message["type"] == "websocket.disconnect":
                return

    async with serve(handler) as url, client(url) as ws:
        await ws.send("valid")
        await ws.send(b"caf\xc3", text=True)  # truncated UTF-8 sequence
        await within(ws.wait_closed())
        assert ws.close_code == 1007
        assert await within(events.get()) == {"type": "websocket.receive", "text": "valid"}
        disconnect = await within(events.get())
    assert disconnect["type"] == "websocket.disconnect"
    assert disconnect["code"] == 1007


async def test_invalid_utf8_arriving_with_the_peers_close() -> None:
    # The bad message and the Close come in one read: websockets has already echoed the
    # Close when the text is decoded, so the connection cannot fail with 1007 any more. The
    # message is dropped and the peer's close stands (uvicorn raises InvalidState here).
    events: asyncio.Queue[Message] = asyncio.Queue()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        events.put_nowait(await receive())

    async with serve(handler) as url, RawClient(url) as raw:
        raw.protocol.send_text(b"\xff")
        raw.protocol.send_close(4000, "bye")
        raw.flush()
        echo = await within(raw.next_event())
        assert await within(raw.next_event()) is None
        assert await within(events.get()) == {
            "type": "websocket.disconnect",
            "code": 4000,
            "reason": "bye",
        }
    assert isinstance(echo, Frame)
    assert Close.parse(echo.data).code == 4000


async def test_fragmented_text_is_reassembled_and_checked() -> None:
    events: asyncio.Queue[Message] = asyncio.Queue()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            events.put_nowait(message)
            if message["type"] == "websocket.disconnect":
                return

    async with serve(handler) as url, client(url) as ws:
        # "é" split across two frames is valid once reassembled.
        await ws.send([b"caf\xc3", b"\xa9"], text=True)
        assert await within(events.get()) == {"type": "websocket.receive", "text": "café"}
        await ws.send([b"ok ", b"\xff"], text=True)
        await within(ws.wait_closed())
        assert ws.close_code == 1007
        assert (await within(events.get()))["code"] == 1007


async def test_message_over_max_size_closes_with_1009() -> None:
    events: asyncio.Queue[Message] = asyncio.Queue()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            events.put_nowait(message)
            if message["type"] == "websocket.disconnect":
                return

    async with serve(handler, max_message_size=1024) as url, client(url) as ws:
        await ws.send(b"x" * 1024)  # exactly the limit: accepted
        await ws.send(b"x" * 1025)
        await within(ws.wait_closed())
        assert ws.close_code == 1009
        assert await within(events.get()) == {"type": "websocket.receive", "bytes": b"x" * 1024}
        disconnect = await within(events.get())
    assert disconnect["type"] == "websocket.disconnect"
    assert disconnect["code"] == 1009


# The production stack


@pytest.mark.parametrize("http", ["httptools", "h11"])
async def test_uvicorn_server_run_in_its_own_loop(http: str) -> None:
    """``uvicorn.Server(make_config(...)).run()``, as ``run`` does: uvloop and *http*."""

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        accept = {"nexios.control": True, "nexios.permessage_deflate": True}
        await send({"type": "websocket.accept", **accept})
        await send({"type": "websocket.ping", "bytes": b"uv"})
        pong = await receive()
        await send({"type": "websocket.send", "text": f"{pong['type']} {pong['bytes']!r}"})
        await echo_until_disconnect(receive, send)

    app = App(handler)
    config = make_config(app, "127.0.0.1", 0, log_level="warning", http=http, ping_interval=None)
    assert config.loop == "uvloop"
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            while not server.started:
                assert thread.is_alive(), "uvicorn did not start"
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with client(f"ws://127.0.0.1:{port}/") as ws:
            assert deflate_negotiated(ws)
            assert await within(ws.recv()) == "websocket.pong b'uv'"
            await ws.send(b"\xc3(", text=True)
            await within(ws.wait_closed())
            assert ws.close_code == 1007
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, TIMEOUT)
    assert not thread.is_alive()
    assert not app.errors, app.errors


# Configuration


def test_make_config() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        pass

    config = make_config(
        app,
        "0.0.0.0",
        9000,
        ping_interval=1.5,
        ping_timeout=None,
        max_message_size=4096,
        compression=True,
        root_path="/api",
    )
    assert (config.host, config.port, config.root_path) == ("0.0.0.0", 9000, "/api")
    assert config.ws is NexiosWebSocketProtocol
    assert config.ws_ping_interval == 1.5
    assert config.ws_ping_timeout is None
    assert config.ws_max_size == 4096
    assert config.ws_per_message_deflate is True
    # uvicorn's HTTP protocols, with the request head's limits.
    assert config.http is NexiosHttpToolsProtocol
    assert (config.loop, config.lifespan) == ("uvloop", "on")

    defaults = make_config(app, http="h11")
    assert (defaults.host, defaults.port, defaults.http) == ("127.0.0.1", 8000, NexiosH11Protocol)
    assert (defaults.ws_ping_interval, defaults.ws_ping_timeout) == (20.0, 20.0)
    assert defaults.ws_max_size == 1 << 20
    assert defaults.ws_per_message_deflate is False

    with pytest.raises(TypeError, match="max_message_size"):
        make_config(app, ws_max_size=10)


def test_run_serves_make_config(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[uvicorn.Config] = []
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda self, sockets=None: served.append(self.config)
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        pass

    nexios_server.run(app, "127.0.0.1", 8123, ping_interval=None, compression=True)
    (config,) = served
    assert config.port == 8123
    assert config.ws is NexiosWebSocketProtocol
    assert config.ws_ping_interval is None
    assert config.ws_per_message_deflate is True


async def test_close_inside_a_fragmented_message_is_echoed() -> None:
    # RFC 6455 section 5.4: a control frame may come between the fragments of a message, and
    # a Close is one. The server echoes the peer's code (websockets alone answers 1002) and
    # drops the unfinished message; the fragment after the Close is ignored (Autobahn 7.1.5).
    events: asyncio.Queue[Message] = asyncio.Queue()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        events.put_nowait(await receive())

    async with serve(handler) as url, RawClient(url) as raw:
        for frame in (
            Frame(Opcode.TEXT, b"fragment1", fin=False),
            Frame(Opcode.CLOSE, Close(1000, "").serialize()),
            Frame(Opcode.CONT, b"fragment2", fin=True),
        ):
            raw.writer.write(frame.serialize(mask=True, extensions=[]))
        echo = await within(raw.next_event())
        assert await within(raw.next_event()) is None  # the server closed the TCP connection
        assert await within(events.get()) == {
            "type": "websocket.disconnect",
            "code": 1000,
            "reason": "",
        }
    assert isinstance(echo, Frame)
    assert echo.opcode is Opcode.CLOSE
    assert Close.parse(echo.data).code == 1000


async def test_app_answering_a_message_the_peer_followed_with_a_protocol_error() -> None:
    # A message, then a frame with a reserved bit set, in one read: the app gets the message,
    # then the server fails the connection (1002) before the app answers. The app's answer
    # is a send to a peer that is gone (ClientDisconnected, as after the peer's Close), not
    # a send after its own close (uvicorn's RuntimeError); its close does nothing.
    outcome: asyncio.Queue[Any] = asyncio.Queue()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        message = await receive()
        outcome.put_nowait(message)
        for attempt in (
            {"type": "websocket.send", "text": message["text"]},
            {"type": "websocket.ping", "bytes": b""},
        ):
            try:
                await send(attempt)
            except ClientDisconnected as exc:
                outcome.put_nowait(exc)
        await send({"type": "websocket.close", "code": 1000})
        outcome.put_nowait(await receive())

    async with serve(handler) as url, RawClient(url) as raw:
        bad = bytearray(Frame(Opcode.TEXT, b"again").serialize(mask=True, extensions=[]))
        bad[0] |= 0x20  # RSV2, with no extension that defines it
        raw.writer.write(Frame(Opcode.TEXT, b"hello").serialize(mask=True, extensions=[]) + bad)
        close = await within(raw.next_event())
        assert await within(raw.next_event()) is None
        assert await within(outcome.get()) == {"type": "websocket.receive", "text": "hello"}
        assert isinstance(await within(outcome.get()), ClientDisconnected)
        assert isinstance(await within(outcome.get()), ClientDisconnected)
        disconnect = await within(outcome.get())
    assert isinstance(close, Frame)
    assert Close.parse(close.data).code == 1002
    assert disconnect["type"] == "websocket.disconnect"
    assert disconnect["code"] == 1002


# Frames written by nexios (no extension), the synchronous send, and reading flow control


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
def test_frame_header_matches_websockets(opcode: Opcode, length: int) -> None:
    payload = b"x" * length
    ours = frame_header(opcode.value, length) + payload
    assert ours == Frame(opcode, payload).serialize(mask=False, extensions=[])


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536, 200_000])
async def test_messages_of_every_length_class_arrive_whole(length: int) -> None:
    text = "é" * (length // 2) + "x" * (length % 2)
    data = bytes(range(256)) * (length // 256) + b"\0" * (length % 256)

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": text})
        await send({"type": "websocket.send", "bytes": data})
        await receive()

    async with serve(handler) as url, client(url, max_size=None) as ws:
        assert await within(ws.recv()) == text
        assert await within(ws.recv()) == data


def protocol_of(scope: Scope) -> NexiosWebSocketProtocol:
    protocol = scope["extensions"]["nexios.websocket.send_nowait"]["send_nowait"].__self__
    assert isinstance(protocol, NexiosWebSocketProtocol)
    return protocol


async def test_send_nowait_writes_the_given_frame_as_it_is() -> None:
    results: asyncio.Queue[Any] = asyncio.Queue()
    frame = frame_header(Opcode.TEXT.value, 5) + b"hello"

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        extension = scope["extensions"]["nexios.websocket.send_nowait"]
        nowait = extension["send_nowait"]
        assert extension["send"] == send
        message = {"type": "websocket.send", "text": "hello"}
        results.put_nowait(nowait(message, frame))  # before accept: refused
        await send({"type": "websocket.accept"})
        results.put_nowait(nowait(message, frame))
        results.put_nowait(nowait({"type": "websocket.send", "bytes": b"\1\2"}, None))
        peer = await receive()  # the client's close
        results.put_nowait(nowait(message, frame))  # after the peer's close: refused
        results.put_nowait(peer["type"])

    async with serve(handler) as url:
        async with RawClient(url) as raw:
            first = await within(raw.next_event())
            second = await within(raw.next_event())
            wire = bytes(raw.wire)
            raw.protocol.send_close(1000)
            raw.flush()
            await within(raw.next_event())  # the echoed Close
        assert [await within(results.get()) for _ in range(5)] == [
            False,
            True,
            True,
            False,
            "websocket.disconnect",
        ]
    assert isinstance(first, Frame)
    assert first.data == b"hello"
    assert isinstance(second, Frame)
    assert second.opcode is Opcode.BINARY
    assert second.data == b"\1\2"
    assert wire.startswith(frame)


async def test_send_nowait_on_a_compressed_connection_compresses() -> None:
    text = "compressible " * 100

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept", "nexios.permessage_deflate": True})
        nowait = scope["extensions"]["nexios.websocket.send_nowait"]["send_nowait"]
        payload = text.encode()
        assert nowait({"type": "websocket.send", "text": text}, frame_header(1, len(payload)))
        await receive()

    async with serve(handler) as url, RawClient(url, offer_deflate=True) as raw:
        frame = await within(raw.next_event())
        wire = bytes(raw.wire)
    assert isinstance(frame, Frame)
    assert frame.data == text.encode()
    assert wire[0] & 0x40  # RSV1: compressed, not the uncompressed frame handed in
    assert len(wire) < len(text)


async def test_send_nowait_refuses_while_the_peer_does_not_read() -> None:
    refused = asyncio.Event()
    sent: list[int] = []
    chunk = b"\0" * 65536

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        nowait = scope["extensions"]["nexios.websocket.send_nowait"]["send_nowait"]
        message = {"type": "websocket.send", "bytes": chunk}
        count = 0
        for _ in range(2000):  # at most 128 MiB: the buffers fill long before
            if not nowait(message, None):
                break
            count += 1
        sent.append(count)
        refused.set()
        await send(message)  # waits for room, then goes out after the others
        await send({"type": "websocket.send", "text": "done"})
        await receive()

    async with serve(handler) as url, RawClient(url) as raw:
        # The client reads nothing until the server refuses to send at once.
        await within(refused.wait())
        assert 0 < sent[0] < 2000
        received = 0
        while True:
            frame = await within(raw.next_event())
            assert isinstance(frame, Frame)
            if frame.opcode is Opcode.TEXT:
                break
            assert frame.data == chunk
            received += 1
    assert frame.data == b"done"
    assert received == sent[0] + 1  # nothing lost, nothing written twice


async def test_reading_pauses_while_the_app_is_behind() -> None:
    scopes: asyncio.Queue[Scope] = asyncio.Queue()
    go = asyncio.Event()
    count = 50
    size = 65536

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        scopes.put_nowait(scope)
        await go.wait()
        texts = []
        for _ in range(count):
            message = await receive()
            texts.append(message["text"][:8].strip())
        await send({"type": "websocket.send", "text": ",".join(texts)})
        await receive()

    backlog = ServerLimits().max_backlog
    async with serve(handler) as url, RawClient(url) as raw:
        protocol = protocol_of(await within(scopes.get()))
        stopped = asyncio.Event()
        held = protocol._held

        def spy() -> None:
            held()
            if protocol.read_paused and protocol._waiting > backlog:
                stopped.set()

        protocol._held = spy  # type: ignore[method-assign]
        # 50 messages of 64 KiB, 3.2 MiB: more than the backlog the app may be behind.
        for i in range(count):
            raw.protocol.send_text(f"{i:<8}".encode() + b"." * (size - 8))
        raw.flush()
        await within(stopped.wait())
        # The app reads nothing yet: the server stops reading once the messages waiting
        # are past max_backlog (by one at most); the rest wait in the socket.
        waiting = len(protocol._inbox.items)
        cost = size + nexios_server.FRAME_COST
        assert backlog < waiting * cost <= backlog + cost
        go.set()
        frame = await within(raw.next_event())
        assert isinstance(frame, Frame)
        assert frame.data.decode() == ",".join(str(i) for i in range(count))
        assert not protocol.read_paused
        assert protocol._waiting == 0


async def test_send_takes_any_bytes_like_and_refuses_an_empty_message() -> None:
    errors: asyncio.Queue[BaseException] = asyncio.Queue()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "bytes": bytearray(b"array")})
        await send({"type": "websocket.send", "bytes": memoryview(b"view")})
        try:
            await send({"type": "websocket.send"})
        except TypeError as exc:
            errors.put_nowait(exc)
        await send({"type": "websocket.send", "text": "still open"})
        await receive()

    async with serve(handler) as url, client(url) as ws:
        assert await within(ws.recv()) == b"array"
        assert await within(ws.recv()) == b"view"
        assert await within(ws.recv()) == "still open"
        error = await within(errors.get())
    assert "needs 'bytes' or 'text'" in str(error)
