"""NexiosApp end to end, on the server ``app.run()`` starts, with real clients.

Every test serves a small ``NexiosApp`` with the ``live_server`` fixture (conftest.py:
``nexios.server.make_config`` with the app's ``websocket_config``, as ``NexiosApp.run()``
does) and talks to it with the ``websockets`` client, ``httpx`` or a raw TCP socket.
What a handler sees that the client cannot (an exception it caught, its close code after
the client left) it reports through an ``asyncio.Queue``; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response

from nexios import (
    NexiosApp,
    WebSocket,
    WebSocketConfig,
    WebSocketConsumer,
    WebsocketRoutes,
    WSRouter,
)
from nexios.exceptions import WebSocketDisconnect, WebSocketException, WebSocketStateError
from nexios.websockets import WebSocketState

TIMEOUT = 5.0

CONNECTING = WebSocketState.CONNECTING
CONNECTED = WebSocketState.CONNECTED
DISCONNECTED = WebSocketState.DISCONNECTED


async def within(awaitable: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(awaitable, TIMEOUT)


class Client(ClientConnection):
    """The websockets client, also keeping the Ping and Pong frames it receives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.control_frames: asyncio.Queue[Frame] = asyncio.Queue()

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode in (Opcode.PING, Opcode.PONG):
            self.control_frames.put_nowait(event)
        super().process_event(event)


def client(url: str, **options: Any) -> Any:
    """``websockets.asyncio.client.connect`` with bounded waits and no client keepalive."""
    options.setdefault("ping_interval", None)
    return connect(
        url, create_connection=Client, open_timeout=TIMEOUT, close_timeout=TIMEOUT, **options
    )


async def closed_by_server(ws: ClientConnection) -> tuple[int, str]:
    """Wait for the server's Close; its code and reason."""
    with pytest.raises(ConnectionClosed) as info:
        await within(ws.recv())
    assert info.value.rcvd is not None, "the server sent no Close frame"
    return info.value.rcvd.code, info.value.rcvd.reason


async def refused(url: str, **options: Any) -> Response:
    """Open a WebSocket that the server refuses; the HTTP response it refused with."""
    with pytest.raises(InvalidStatus) as info:
        async with client(url, **options):
            pass
    return info.value.response


# Messages


async def test_echo_text_bytes_and_json(live_server: Any) -> None:
    app = NexiosApp()

    @app.ws_route("/echo")
    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(await ws.receive_text())
        await ws.send_bytes(await ws.receive_bytes())
        data = await ws.receive_json()  # from a text frame
        await ws.send_json(data)
        await ws.send_json(data, mode="binary")
        await ws.send_json(await ws.receive_json())  # from a binary frame

    async with live_server(app) as server, client(server.ws + "/echo") as ws:
        await ws.send("héllo")
        assert await within(ws.recv()) == "héllo"
        await ws.send(b"\x00\xffbytes")
        assert await within(ws.recv()) == b"\x00\xffbytes"
        await ws.send(json.dumps({"a": [1, 2.5, None, True], "b": "é"}))
        assert json.loads(await within(ws.recv())) == {"a": [1, 2.5, None, True], "b": "é"}
        binary = await within(ws.recv())
        assert isinstance(binary, bytes)
        assert json.loads(binary) == {"a": [1, 2.5, None, True], "b": "é"}
        await ws.send(b'{"from": "bytes"}')
        assert json.loads(await within(ws.recv())) == {"from": "bytes"}
        # The handler returned without closing: a normal close.
        assert await closed_by_server(ws) == (1000, "")


async def test_receive_returns_the_raw_message_and_raises_on_close(live_server: Any) -> None:
    app = NexiosApp()
    seen: asyncio.Queue[Any] = asyncio.Queue()

    @app.ws_route("/raw")
    async def raw(ws: WebSocket) -> None:
        await ws.accept()
        seen.put_nowait(await ws.receive())
        seen.put_nowait(await ws.receive())
        try:
            await ws.receive()
        except WebSocketDisconnect as exc:
            seen.put_nowait((exc.code, exc.reason, ws.close_code, ws.close_reason))

    async with live_server(app) as server:
        async with client(server.ws + "/raw") as ws:
            await ws.send("text")
            await ws.send(b"\x01\x02")
            await ws.close(4000, "bye")
        assert await within(seen.get()) == {"type": "websocket.receive", "text": "text"}
        assert await within(seen.get()) == {"type": "websocket.receive", "bytes": b"\x01\x02"}
        assert await within(seen.get()) == (4000, "bye", 4000, "bye")


async def test_iterators_end_when_the_client_closes(live_server: Any) -> None:
    app = NexiosApp()
    after: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    @app.ws_route("/iter/text")
    async def iter_text(ws: WebSocket) -> None:
        await ws.accept()
        async for text in ws.iter_text():
            await ws.send_text(text)
        after.put_nowait((ws.close_code, ws.close_reason, ws.connection_state))

    @app.ws_route("/iter/bytes")
    async def iter_bytes(ws: WebSocket) -> None:
        await ws.accept()
        async for data in ws.iter_bytes():
            await ws.send_bytes(data)
        after.put_nowait((ws.close_code, ws.close_reason, ws.connection_state))

    @app.ws_route("/iter/json")
    async def iter_json(ws: WebSocket) -> None:
        await ws.accept()
        async for value in ws.iter_json():
            await ws.send_json(value)
        after.put_nowait((ws.close_code, ws.close_reason, ws.connection_state))

    cases: dict[str, list[Any]] = {
        "text": ["one", "two"],
        "bytes": [b"one", b"two"],
        "json": ['{"n": 1}', "[2]"],
    }
    async with live_server(app) as server:
        for kind, messages in cases.items():
            async with client(f"{server.ws}/iter/{kind}") as ws:
                for message in messages:
                    await ws.send(message)
                    echoed = await within(ws.recv())
                    if kind == "json":
                        assert json.loads(echoed) == json.loads(message)
                    else:
                        assert echoed == message
                await ws.close(4000, f"done with {kind}")
            assert await within(after.get()) == (4000, f"done with {kind}", DISCONNECTED)


# Handshake: accept, subprotocols, headers, refusals


async def test_accept_with_subprotocol_and_headers(live_server: Any) -> None:
    app = NexiosApp()
    offered: asyncio.Queue[list[str]] = asyncio.Queue()

    @app.ws_route("/chat")
    async def chat(ws: WebSocket) -> None:
        offered.put_nowait(ws.subprotocols)
        await ws.accept(subprotocol="chat", headers={"X-Server": "Nexios"})
        await ws.send_text("welcome")

    async with (
        live_server(app) as server,
        client(server.ws + "/chat", subprotocols=["superchat", "chat"]) as ws,
    ):
        assert ws.subprotocol == "chat"
        assert ws.response.headers["X-Server"] == "Nexios"
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "chat"
        assert await within(ws.recv()) == "welcome"
        assert await within(offered.get()) == ["superchat", "chat"]


async def test_accepting_a_subprotocol_not_offered_refuses_with_500(live_server: Any) -> None:
    app = NexiosApp()
    errors: asyncio.Queue[BaseException] = asyncio.Queue()

    @app.ws_route("/chat")
    async def chat(ws: WebSocket) -> None:
        try:
            await ws.accept(subprotocol="graphql-ws")
        except WebSocketStateError as exc:
            errors.put_nowait(exc)
            raise

    async with live_server(app) as server:
        response = await refused(server.ws + "/chat", subprotocols=["chat"])
        error = await within(errors.get())
    assert response.status_code == 500
    assert response.body == b"Internal error"
    assert "'graphql-ws'" in str(error)
    assert "offered chat" in str(error)


async def test_close_after_accept_sends_code_and_reason(live_server: Any) -> None:
    app = NexiosApp()

    @app.ws_route("/close")
    async def close(ws: WebSocket) -> None:
        await ws.accept()
        await ws.close(4001, "policy says no")

    @app.ws_route("/return")
    async def just_return(ws: WebSocket) -> None:
        await ws.accept()

    async with live_server(app) as server:
        async with client(server.ws + "/close") as ws:
            assert await closed_by_server(ws) == (4001, "policy says no")
        async with client(server.ws + "/return") as ws:
            assert await closed_by_server(ws) == (1000, "")


async def test_close_before_accept_refuses_the_handshake(live_server: Any) -> None:
    app = NexiosApp()

    @app.ws_route("/refuse/{code:int}")
    async def refuse(ws: WebSocket, code: int) -> None:
        await ws.close(code, "Go away")

    expected = {1000: 403, 1008: 403, 4000: 403, 1003: 400, 1009: 413, 1011: 500}
    expected |= {1012: 503, 1013: 503}
    async with live_server(app) as server:
        for code, status in expected.items():
            response = await refused(f"{server.ws}/refuse/{code}")
            assert (code, response.status_code) == (code, status)
            assert response.body == b"Go away"
            assert response.headers["Content-Type"] == "text/plain; charset=utf-8"


async def test_handler_returning_without_accept_is_refused_with_403(live_server: Any) -> None:
    app = NexiosApp()

    @app.ws_route("/silent")
    async def silent(ws: WebSocket) -> None:
        pass

    async with live_server(app) as server:
        response = await refused(server.ws + "/silent")
    assert response.status_code == 403
    assert response.body == b"Handshake not accepted"


async def test_unknown_path_is_refused_with_404(live_server: Any) -> None:
    app = NexiosApp()

    @app.ws_route("/ws")
    async def ws_handler(ws: WebSocket) -> None:
        await ws.accept()

    async with live_server(app) as server:
        response = await refused(server.ws + "/nowhere")
    assert response.status_code == 404
    assert response.body == b"Not Found"


async def test_send_denial_response(live_server: Any) -> None:
    app = NexiosApp()

    @app.ws_route("/private")
    async def private(ws: WebSocket) -> None:
        if ws.headers.get("authorization") != "Bearer good":
            await ws.send_denial_response(
                401, "missing or bad token", headers={"WWW-Authenticate": "Bearer"}
            )
            return
        await ws.accept()
        await ws.send_text("welcome")

    async with live_server(app) as server:
        response = await refused(server.ws + "/private")
        async with client(
            server.ws + "/private", additional_headers={"Authorization": "Bearer good"}
        ) as ws:
            assert await within(ws.recv()) == "welcome"
    assert response.status_code == 401
    assert response.body == b"missing or bad token"
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_websocket_exception_closes_or_refuses(live_server: Any) -> None:
    app = NexiosApp()

    @app.ws_route("/before")
    async def before(ws: WebSocket) -> None:
        raise WebSocketException(1008, "token expired")

    @app.ws_route("/after")
    async def after(ws: WebSocket) -> None:
        await ws.accept()
        raise WebSocketException(4401, "token expired")

    async with live_server(app) as server:
        response = await refused(server.ws + "/before")
        async with client(server.ws + "/after") as ws:
            assert await closed_by_server(ws) == (4401, "token expired")
    assert (response.status_code, response.body) == (403, b"token expired")


async def test_raw_send_messages(live_server: Any) -> None:
    app = NexiosApp()

    @app.ws_route("/raw")
    async def raw(ws: WebSocket) -> None:
        await ws.send({"type": "websocket.accept", "subprotocol": "chat"})
        await ws.send({"type": "websocket.send", "text": "text"})
        await ws.send({"type": "websocket.send", "bytes": b"bytes"})
        await ws.send({"type": "websocket.close", "code": 4004, "reason": "raw close"})

    async with (
        live_server(app) as server,
        client(server.ws + "/raw", subprotocols=["chat"]) as ws,
    ):
        assert ws.subprotocol == "chat"
        assert await within(ws.recv()) == "text"
        assert await within(ws.recv()) == b"bytes"
        assert await closed_by_server(ws) == (4004, "raw close")


async def test_refusals_log_no_server_error(live_server: Any) -> None:
    app = NexiosApp()

    @app.ws_route("/refuse")
    async def refuse(ws: WebSocket) -> None:
        await ws.close(1008, "Go away")

    async with live_server(app) as server:
        assert (await refused(server.ws + "/refuse")).status_code == 403
        assert (await refused(server.ws + "/nowhere")).status_code == 404
    # The server has stopped: every handler has returned and uvicorn logged what it would.
    assert server.errors == []


async def test_http_on_the_same_server(live_server: Any) -> None:
    app = NexiosApp()

    @app.ws_route("/ws/{room}")
    async def room(ws: WebSocket) -> None:
        await ws.accept()

    @app.get("/hello/{name}")
    async def hello(request: Any) -> dict[str, str]:
        return {"hello": request.path_params["name"]}

    async with (
        live_server(app) as server,
        httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http,
    ):
        ok = await http.get("/hello/nexios")
        upgrade = await http.get("/ws/lobby")
        missing = await http.get("/nowhere")
    assert (ok.status_code, ok.json()) == (200, {"hello": "nexios"})
    assert upgrade.status_code == 426
    assert upgrade.headers["Upgrade"] == "websocket"
    assert "WebSocket" in upgrade.text
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})


# Errors in handlers


async def test_receive_text_on_a_binary_frame_closes_with_1003(live_server: Any) -> None:
    app = NexiosApp()

    @app.ws_route("/text")
    async def text_only(ws: WebSocket) -> None:
        await ws.accept()
        await ws.receive_text()

    @app.ws_route("/bytes")
    async def bytes_only(ws: WebSocket) -> None:
        await ws.accept()
        await ws.receive_bytes()

    async with live_server(app) as server:
        async with client(server.ws + "/text") as ws:
            await ws.send(b"binary")
            assert await closed_by_server(ws) == (
                1003,
                "Expected a text message, got a binary one.",
            )
        async with client(server.ws + "/bytes") as ws:
            await ws.send("text")
            assert await closed_by_server(ws) == (
                1003,
                "Expected a binary message, got a text one.",
            )


async def test_receive_json_on_bad_json_closes_with_1007(live_server: Any) -> None:
    app = NexiosApp()

    @app.ws_route("/json")
    async def json_only(ws: WebSocket) -> None:
        await ws.accept()
        await ws.receive_json()

    async with live_server(app) as server, client(server.ws + "/json") as ws:
        await ws.send("{not json")
        code, reason = await closed_by_server(ws)
    assert code == 1007
    assert reason.startswith("Message is not valid JSON")


async def test_handler_catching_json_decode_error_stays_connected(live_server: Any) -> None:
    app = NexiosApp()

    @app.ws_route("/json")
    async def forgiving(ws: WebSocket) -> None:
        await ws.accept()
        while True:
            try:
                data = await ws.receive_json()
            except json.JSONDecodeError as exc:
                await ws.send_json({"error": "invalid JSON", "code": getattr(exc, "code", None)})
                continue
            except WebSocketDisconnect:
                return
            await ws.send_json({"ok": data})

    async with live_server(app) as server, client(server.ws + "/json") as ws:
        await ws.send("{oops")
        assert json.loads(await within(ws.recv())) == {"error": "invalid JSON", "code": 1007}
        await ws.send('{"a": 1}')
        assert json.loads(await within(ws.recv())) == {"ok": {"a": 1}}


async def test_exception_after_accept_closes_with_1011_without_leaking(
    live_server: Any,
) -> None:
    app = NexiosApp()

    @app.ws_route("/boom")
    async def boom(ws: WebSocket) -> None:
        await ws.accept()
        await ws.receive_text()
        raise RuntimeError("secret database password")

    async with live_server(app) as server, client(server.ws + "/boom") as ws:
        await ws.send("go")
        code, reason = await closed_by_server(ws)
    assert (code, reason) == (1011, "Internal error")


async def test_exception_before_accept_refuses_with_500(live_server: Any) -> None:
    app = NexiosApp()

    @app.ws_route("/boom")
    async def boom(ws: WebSocket) -> None:
        raise RuntimeError("secret database password")

    async with live_server(app) as server:
        response = await refused(server.ws + "/boom")
    assert response.status_code == 500
    assert response.body == b"Internal error"
    assert b"secret" not in response.body


async def test_wrong_state_calls_raise_websocket_state_error(live_server: Any) -> None:
    app = NexiosApp()
    outcomes: asyncio.Queue[list[tuple[str, str]]] = asyncio.Queue()

    @app.ws_route("/state")
    async def misuse(ws: WebSocket) -> None:
        caught: list[tuple[str, str]] = []

        async def attempt(what: str, awaitable: Awaitable[Any]) -> None:
            try:
                await awaitable
            except WebSocketStateError as exc:
                caught.append((what, str(exc)))

        await attempt("send_text before accept", ws.send_text("early"))
        await attempt("send_bytes before accept", ws.send_bytes(b"early"))
        await attempt("receive_text before accept", ws.receive_text())
        await ws.accept()
        await attempt("accept twice", ws.accept())
        await ws.close(4002, "closing")
        await ws.close(4003, "again")  # closing twice does nothing
        await attempt("send_text after close", ws.send_text("late"))
        await attempt("send_json after close", ws.send_json({"late": True}))
        await attempt("send_ping after close", ws.send_ping(b"late"))
        outcomes.put_nowait(caught)

    async with live_server(app) as server, client(server.ws + "/state") as ws:
        assert await closed_by_server(ws) == (4002, "closing")
        caught = dict(await within(outcomes.get()))
    assert list(caught) == [
        "send_text before accept",
        "send_bytes before accept",
        "receive_text before accept",
        "accept twice",
        "send_text after close",
        "send_json after close",
        "send_ping after close",
    ]
    assert "accept()" in caught["send_text before accept"]
    assert "closed (code 4002)" in caught["send_text after close"]


async def send_after_client_left(live_server: Any) -> tuple[Any, ...]:
    """The client closes with 4000 "bye"; then the handler sends, then receives."""
    app = NexiosApp()
    left = asyncio.Event()
    report: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    @app.ws_route("/late")
    async def late(ws: WebSocket) -> None:
        await ws.accept()
        await left.wait()
        try:
            await ws.send_text("anyone there?")
        except WebSocketDisconnect as exc:
            sent: Any = exc
        else:
            sent = None
        try:
            await ws.receive_text()
        except WebSocketDisconnect as exc:
            received: Any = exc
        else:
            received = None
        report.put_nowait((sent, received, ws.close_code, ws.close_reason, ws.connection_state))

    async with live_server(app) as server:
        async with client(server.ws + "/late") as ws:
            await ws.close(4000, "bye")
            assert (ws.close_code, ws.close_reason) == (4000, "bye")  # handshake complete
        left.set()
        return await within(report.get())


async def test_send_after_the_client_left_raises_websocket_disconnect(live_server: Any) -> None:
    sent, received, *_, state = await send_after_client_left(live_server)
    assert isinstance(sent, WebSocketDisconnect)
    assert isinstance(received, WebSocketDisconnect)
    assert state is DISCONNECTED


async def test_send_after_the_client_left_reports_the_clients_close_code(
    live_server: Any,
) -> None:
    sent, received, code, reason, _ = await send_after_client_left(live_server)
    assert (received.code, received.reason) == (4000, "bye")
    assert (code, reason) == (4000, "bye")
    assert sent.code == 4000


async def test_receive_timeout_raises_timeout_error_and_keeps_the_connection(
    live_server: Any,
) -> None:
    app = NexiosApp()

    @app.ws_route("/slow")
    async def slow(ws: WebSocket) -> None:
        await ws.accept()
        started = time.monotonic()
        try:
            await ws.receive_text(timeout=0.1)
        except TimeoutError:
            await ws.send_json({"timed_out_after": time.monotonic() - started})
        await ws.send_text(await ws.receive_text(timeout=TIMEOUT))

    async with live_server(app) as server, client(server.ws + "/slow") as ws:
        waited = json.loads(await within(ws.recv()))["timed_out_after"]
        assert 0.1 <= waited < 1.0
        await ws.send("still here")
        assert await within(ws.recv()) == "still here"


# The connection's properties


async def test_scope_properties(live_server: Any) -> None:
    app = NexiosApp()
    seen: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    u = uuid.uuid4()

    @app.ws_route("/rooms/{room}/{id:int}/{f:float}/{u:uuid}/{rest:path}")
    async def room(ws: WebSocket, room: str, id: int) -> None:
        ws.state.x = 1
        ws.state["y"] = 2
        seen.put_nowait(
            {
                "args": (room, id),
                "client": ws.client,
                "header": ws.headers.get("x-custom"),
                "header_upper": ws.headers.get("X-CUSTOM"),
                "header_in": "X-Custom" in ws.headers,
                "raw_headers": list(ws.headers),
                "cookies": ws.cookies,
                "query": dict(ws.query_params),
                "query_list": ws.query_params.getlist("tag"),
                "query_str": str(ws.query_params),
                "path_params": ws.path_params,
                "url": str(ws.url),
                "url_path": ws.url.path,
                "state": (ws.state["x"], ws.state.y),
                "id": (ws.id, ws.id),
                "app": ws.app is app,
                "repr": repr(ws),
            }
        )
        await ws.accept()
        await ws.send_text("ok")

    async with live_server(app) as server:
        url = f"{server.ws}/rooms/lobby/42/2.5/{u}/a/b/c.txt?tag=x&tag=y&q=hello%20world"
        async with client(
            url,
            additional_headers={"X-Custom": "Value", "Cookie": "session=abc; theme=dark"},
        ) as ws:
            assert await within(ws.recv()) == "ok"
            local = ws.local_address
        info = await within(seen.get())
    assert info["args"] == ("lobby", 42)
    assert info["client"] == (local[0], local[1])
    assert info["client"].host == "127.0.0.1"
    assert info["header"] == info["header_upper"] == "Value"
    assert info["header_in"] is True
    assert (b"x-custom", b"Value") in info["raw_headers"]
    assert (b"cookie", b"session=abc; theme=dark") in info["raw_headers"]
    assert all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in info["raw_headers"])
    assert info["cookies"] == {"session": "abc", "theme": "dark"}
    assert info["query"] == {"tag": "y", "q": "hello world"}
    assert info["query_list"] == ["x", "y"]
    assert info["query_str"] == "tag=x&tag=y&q=hello%20world"
    params = info["path_params"]
    assert params == {"room": "lobby", "id": 42, "f": 2.5, "u": u, "rest": "a/b/c.txt"}
    assert type(params["id"]) is int
    assert type(params["f"]) is float
    assert isinstance(params["u"], uuid.UUID)
    assert info["url"] == url
    assert info["url_path"] == f"/rooms/lobby/42/2.5/{u}/a/b/c.txt"
    assert info["state"] == (1, 2)
    first, second = info["id"]
    assert first == second
    assert uuid.UUID(first).version == 4
    assert info["app"] is True
    assert info["repr"] == (
        f"<WebSocket /rooms/lobby/42/2.5/{u}/a/b/c.txt from 127.0.0.1:{local[1]} connecting>"
    )


async def test_url_keeps_the_percent_encoding(live_server: Any) -> None:
    app = NexiosApp()

    @app.ws_route("/files/{name}")
    async def files(ws: WebSocket, name: str) -> None:
        await ws.accept()
        await ws.send_json({"name": name, "url": str(ws.url)})

    async with live_server(app) as server:
        url = server.ws + "/files/my%20room?x=%2F"
        async with client(url) as ws:
            got = json.loads(await within(ws.recv()))
    assert got["name"] == "my room"
    assert got["url"] == url


async def test_middleware_sets_id_and_state(live_server: Any) -> None:
    app = NexiosApp()
    seen: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()

    async def identify(ws: WebSocket, call_next: Any) -> None:
        user = ws.headers.get("x-user")
        if user is None:
            await ws.close(1008, "Who are you?")
            return
        ws.id = user
        ws.state.user = user
        await call_next()

    app.add_ws_middleware(identify)

    @app.ws_route("/me")
    async def me(ws: WebSocket) -> None:
        await ws.accept()
        seen.put_nowait((ws.id, ws.state["user"], ws.state.user))
        await ws.send_text(ws.id)

    async with live_server(app) as server:
        async with client(server.ws + "/me", additional_headers={"X-User": "alice"}) as ws:
            assert await within(ws.recv()) == "alice"
        assert await within(seen.get()) == ("alice", "alice", "alice")
        response = await refused(server.ws + "/me")
    assert (response.status_code, response.body) == (403, b"Who are you?")


async def test_state_transitions(live_server: Any) -> None:
    app = NexiosApp()
    steps: asyncio.Queue[tuple[str, Any, ...]] = asyncio.Queue()

    def record(step: str, ws: WebSocket) -> None:
        steps.put_nowait(
            (
                step,
                ws.client_state,
                ws.application_state,
                ws.connection_state,
                ws.is_connected,
                ws.state == WebSocketState.CONNECTED,
            )
        )

    @app.ws_route("/client-closes")
    async def client_closes(ws: WebSocket) -> None:
        record("before accept", ws)
        await ws.accept()
        record("accepted", ws)
        with contextlib.suppress(WebSocketDisconnect):
            await ws.receive_text()
        record("client closed", ws)

    @app.ws_route("/server-closes")
    async def server_closes(ws: WebSocket) -> None:
        await ws.accept()
        await ws.close()
        record("server closed", ws)

    async with live_server(app) as server:
        async with client(server.ws + "/client-closes"):
            pass
        assert await within(steps.get()) == (
            "before accept",
            CONNECTING,
            CONNECTING,
            CONNECTING,
            False,
            False,
        )
        assert await within(steps.get()) == (
            "accepted",
            CONNECTED,
            CONNECTED,
            CONNECTED,
            True,
            True,
        )
        assert await within(steps.get()) == (
            "client closed",
            DISCONNECTED,
            DISCONNECTED,
            DISCONNECTED,
            False,
            False,
        )
        async with client(server.ws + "/server-closes") as ws:
            assert await closed_by_server(ws) == (1000, "")
        assert await within(steps.get()) == (
            "server closed",
            CONNECTED,
            DISCONNECTED,
            DISCONNECTED,
            False,
            False,
        )


# Pings and pongs


async def test_app_ping_reaches_the_client_and_its_pong_the_app(live_server: Any) -> None:
    app = NexiosApp()

    @app.ws_route("/ping")
    async def ping(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_ping(b"x")
        payload = await ws.receive_pong(timeout=TIMEOUT)
        await ws.send_text(f"pong:{payload.decode()}")

    async with live_server(app) as server, client(server.ws + "/ping") as ws:
        frame = await within(ws.control_frames.get())
        assert (frame.opcode, frame.data) == (Opcode.PING, b"x")
        assert await within(ws.recv()) == "pong:x"


async def test_client_ping_reaches_the_app(live_server: Any) -> None:
    app = NexiosApp()

    @app.ws_route("/ping")
    async def ping(ws: WebSocket) -> None:
        await ws.accept()
        # receive_ping() asks the server to forward control frames, before its first await
        # that suspends; the task runs before the client can answer "ready" with a ping.
        waiting = asyncio.create_task(ws.receive_ping(timeout=TIMEOUT))
        await ws.send_text("ready")
        payload = await waiting
        await ws.send_text(f"ping:{payload.decode()}")

    async with live_server(app) as server, client(server.ws + "/ping") as ws:
        assert await within(ws.recv()) == "ready"
        pong_waiter = await ws.ping(b"y")
        await within(pong_waiter)  # the server answered it, as always
        assert await within(ws.recv()) == "ping:y"


async def test_app_sends_unsolicited_pong(live_server: Any) -> None:
    app = NexiosApp()

    @app.ws_route("/pong")
    async def pong(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_pong(b"heartbeat")
        await ws.send_text("sent")

    async with live_server(app) as server, client(server.ws + "/pong") as ws:
        frame = await within(ws.control_frames.get())
        assert (frame.opcode, frame.data) == (Opcode.PONG, b"heartbeat")
        assert await within(ws.recv()) == "sent"


async def test_control_payload_over_125_bytes_raises_value_error(live_server: Any) -> None:
    app = NexiosApp()

    @app.ws_route("/big-ping")
    async def big_ping(ws: WebSocket) -> None:
        await ws.accept()
        for method in (ws.send_ping, ws.send_pong):
            try:
                await method(b"x" * 126)
            except ValueError as exc:
                await ws.send_text(f"{type(exc).__name__}: {exc}")
        await ws.send_ping(b"x" * 125)  # the largest allowed
        await ws.send_text("done")

    async with live_server(app) as server, client(server.ws + "/big-ping") as ws:
        ping_error = await within(ws.recv())
        pong_error = await within(ws.recv())
        assert ping_error.startswith("ValueError: A ping payload is at most 125 bytes")
        assert "got 126" in ping_error
        assert pong_error.startswith("ValueError: A pong payload is at most 125 bytes")
        assert await within(ws.recv()) == "done"
        frame = await within(ws.control_frames.get())
        assert (frame.opcode, frame.data) == (Opcode.PING, b"x" * 125)


@pytest.mark.parametrize("kind", ["pong", "ping"])
async def test_control_frame_reaches_a_task_while_another_task_reads(
    live_server: Any, kind: str
) -> None:
    app = NexiosApp()

    @app.ws_route("/heartbeat")
    async def heartbeat(ws: WebSocket) -> None:
        await ws.accept()
        reading = asyncio.Event()

        async def watch() -> None:
            await reading.wait()  # the loop below is back in receive_text(): it reads
            try:
                if kind == "pong":
                    await ws.send_ping(b"hb")
                    payload = await ws.receive_pong(timeout=0.5)
                else:
                    await ws.send_text("ping me")
                    payload = await ws.receive_ping(timeout=0.5)
            except TimeoutError:
                payload = b"timeout"
            await ws.send_text(f"{kind}:{payload.decode()}")

        watcher = asyncio.create_task(watch())
        try:
            async for text in ws.iter_text():
                reading.set()
                await ws.send_text(f"echo:{text}")
        finally:
            watcher.cancel()

    async with live_server(app) as server, client(server.ws + "/heartbeat") as ws:
        await ws.send("start")
        assert await within(ws.recv()) == "echo:start"
        if kind == "ping":
            assert await within(ws.recv()) == "ping me"
            await within(await ws.ping(b"hb"))
        assert await within(ws.recv()) == f"{kind}:hb"


async def test_two_tasks_receiving_at_once_do_not_hang(live_server: Any) -> None:
    app = NexiosApp()
    outcome: asyncio.Queue[list[Any]] = asyncio.Queue()

    @app.ws_route("/two")
    async def two(ws: WebSocket) -> None:
        await ws.accept()
        first = asyncio.create_task(ws.receive_text())
        second = asyncio.create_task(ws.receive_text())
        await ws.send_text("ready")
        _, pending = await asyncio.wait({first, second}, timeout=0.5)
        for task in pending:
            task.cancel()
        outcome.put_nowait(
            [
                "hung" if task in pending else (task.exception() or task.result())
                for task in (first, second)
            ]
        )

    async with live_server(app) as server, client(server.ws + "/two") as ws:
        assert await within(ws.recv()) == "ready"
        await ws.send("one")
        await ws.send("two")
        results = await within(outcome.get())
    # Either both got a message, or the second was told it may not receive.
    assert results[0] == "one"
    assert results[1] == "two" or (
        isinstance(results[1], WebSocketStateError) and "Two tasks" in str(results[1])
    )


# Compression


def compression_app(config: WebSocketConfig | None = None) -> NexiosApp:
    app = NexiosApp(websocket_config=config)

    @app.ws_route("/ask")
    async def ask(ws: WebSocket) -> None:
        offered = ws.enable_compression()
        await ws.accept()
        await ws.send_json({"offered": offered, "compression": ws.compression})
        await ws.send_text(await ws.receive_text())

    @app.ws_route("/plain")
    async def plain(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_json({"compression": ws.compression})
        await ws.send_text(await ws.receive_text())

    @app.ws_route("/late")
    async def late(ws: WebSocket) -> None:
        await ws.accept()
        try:
            ws.enable_compression()
        except WebSocketStateError as exc:
            await ws.send_text(f"{type(exc).__name__}: {exc}")

    @app.ws_route("/twice")
    async def twice(ws: WebSocket) -> None:
        ws.enable_compression()
        await ws.accept()
        # Already on: asking again after accept is harmless.
        await ws.send_json({"again": ws.enable_compression()})

    return app


async def test_enable_compression_before_accept(live_server: Any) -> None:
    big = "compress me " * 500
    async with live_server(compression_app()) as server:
        # The websockets client offers permessage-deflate by default.
        async with client(server.ws + "/ask") as ws:
            assert json.loads(await within(ws.recv())) == {"offered": True, "compression": True}
            assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
            await ws.send(big)
            assert await within(ws.recv()) == big
        async with client(server.ws + "/ask", compression=None) as ws:
            assert json.loads(await within(ws.recv())) == {"offered": False, "compression": False}
            assert ws.protocol.extensions == []


async def test_compression_is_opt_in(live_server: Any) -> None:
    async with live_server(compression_app()) as server, client(server.ws + "/plain") as ws:
        assert json.loads(await within(ws.recv())) == {"compression": False}
        assert ws.protocol.extensions == []
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        await ws.send("still works")
        assert await within(ws.recv()) == "still works"


async def test_compression_app_wide(live_server: Any) -> None:
    app = compression_app(WebSocketConfig(compression=True))
    big = "compress me " * 500
    async with live_server(app) as server:
        async with client(server.ws + "/plain") as ws:
            await within(ws.recv())
            assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
            await ws.send(big)
            assert await within(ws.recv()) == big
        async with client(server.ws + "/plain", compression=None) as ws:
            await within(ws.recv())
            assert ws.protocol.extensions == []


async def test_enable_compression_after_accept(live_server: Any) -> None:
    async with live_server(compression_app()) as server:
        async with client(server.ws + "/late") as ws:
            error = await within(ws.recv())
            assert error.startswith("WebSocketStateError: Compression is negotiated during")
            assert ws.protocol.extensions == []
            assert await closed_by_server(ws) == (1000, "")
        async with client(server.ws + "/twice") as ws:
            assert json.loads(await within(ws.recv())) == {"again": True}


# Limits and keepalive


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "deflate"])
async def test_message_over_max_message_size_closes_with_1009(
    live_server: Any, compression: bool
) -> None:
    # With permessage-deflate the limit applies to the decompressed size: the 2 KiB of "x"
    # below deflate to a few bytes.
    config = WebSocketConfig(max_message_size=1024, compression=compression)
    app = NexiosApp(websocket_config=config)
    after: asyncio.Queue[int | None] = asyncio.Queue()

    @app.ws_route("/small")
    async def small(ws: WebSocket) -> None:
        await ws.accept()
        async for text in ws.iter_text():
            await ws.send_text(f"got {len(text)}")
        after.put_nowait(ws.close_code)

    async with live_server(app) as server, client(server.ws + "/small") as ws:
        assert bool(ws.protocol.extensions) is compression
        await ws.send("x" * 1024)  # the largest allowed
        assert await within(ws.recv()) == "got 1024"
        await ws.send("x" * 2048)
        code, _ = await closed_by_server(ws)
        assert code == 1009
        assert await within(after.get()) == 1009


async def read_frames(reader: asyncio.StreamReader) -> list[tuple[int, bytes]]:
    """Unmasked server frames (opcode, payload) until EOF."""
    data = await reader.read()  # until EOF
    frames: list[tuple[int, bytes]] = []
    while data:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif length == 127:
            (length,) = struct.unpack("!Q", data[2:10])
            offset = 10
        frames.append((opcode, data[offset : offset + length]))
        data = data[offset + length :]
    return frames


async def test_client_that_never_answers_pings_is_closed(live_server: Any) -> None:
    app = NexiosApp(websocket_config=WebSocketConfig(ping_interval=0.2, ping_timeout=0.2))
    after: asyncio.Queue[tuple[int | None, str | None]] = asyncio.Queue()

    @app.ws_route("/quiet")
    async def quiet(ws: WebSocket) -> None:
        await ws.accept()
        async for _ in ws.iter_text():
            pass
        after.put_nowait((ws.close_code, ws.close_reason))

    async with live_server(app) as server:
        reader, writer = await within(asyncio.open_connection("127.0.0.1", server.port))
        try:
            writer.write(
                b"GET /quiet HTTP/1.1\r\n"
                b"Host: 127.0.0.1\r\n"
                b"Upgrade: websocket\r\n"
                b"Connection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            head = await within(reader.readuntil(b"\r\n\r\n"))
            opened = time.monotonic()
            assert head.startswith(b"HTTP/1.1 101 ")
            assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
            frames = await within(read_frames(reader))
            elapsed = time.monotonic() - opened
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await within(writer.wait_closed())
        assert await within(after.get()) == (1011, "keepalive ping timeout")
    assert [opcode for opcode, _ in frames] == [Opcode.PING.value, Opcode.CLOSE.value]
    assert struct.unpack("!H", frames[1][1][:2]) == (1011,)
    assert 0.35 <= elapsed < 3.0


# Routing forms


def reporter(name: str) -> Any:
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_json({"route": name, "params": ws.path_params})

    return handler


async def test_routing_forms(live_server: Any) -> None:
    app = NexiosApp()
    app.ws_route("/decorated")(reporter("ws_route"))
    app.websocket_route("/websocket-route")(reporter("websocket_route"))
    app.add_ws_route(WebsocketRoutes("/routes-object", reporter("WebsocketRoutes")))

    router = WSRouter(prefix="/r", routes=[WebsocketRoutes("/listed", reporter("routes="))])
    router.ws("/decorated/{n:int}")(reporter("router.ws"))
    app.mount_ws_router(router)
    router.add_ws_route("/added", reporter("router.add_ws_route"))  # after mounting

    moved = WSRouter(prefix="/old")
    moved.add_ws_route("/here", reporter("moved"))
    app.mount_ws_router(moved, "/other")

    outer = WSRouter(prefix="/outer/{tenant}")
    inner = WSRouter(prefix="/inner")
    inner.add_ws_route("/leaf/{n:int}", reporter("nested"))
    outer.mount_ws_router(inner)
    app.mount_ws_router(outer)

    chat = WSRouter(prefix="/chat")
    chat.add_ws_route("/", reporter("chat root"))
    chat.add_ws_route("/{room}", reporter("chat room"))
    app.mount_ws_router(chat)

    served = {
        "/decorated": ("ws_route", {}),
        "/websocket-route": ("websocket_route", {}),
        "/routes-object": ("WebsocketRoutes", {}),
        "/r/listed": ("routes=", {}),
        "/r/decorated/7": ("router.ws", {"n": 7}),
        "/r/added": ("router.add_ws_route", {}),
        "/other/here": ("moved", {}),
        "/outer/acme/inner/leaf/3": ("nested", {"tenant": "acme", "n": 3}),
        "/chat": ("chat root", {}),
        "/chat/lobby": ("chat room", {"room": "lobby"}),
    }
    async with live_server(app) as server:
        for path, (name, params) in served.items():
            async with client(server.ws + path) as ws:
                got = json.loads(await within(ws.recv()))
            assert got == {"route": name, "params": params}, path
        for path in ("/old/here", "/chat-lobby", "/r/decorated/x", "/outer/acme/leaf/3"):
            response = await refused(server.ws + path)
            assert response.status_code == 404, path


async def test_consumer_class_with_json_encoding(live_server: Any) -> None:
    app = NexiosApp()
    ended: asyncio.Queue[int] = asyncio.Queue()

    class Echo(WebSocketConsumer):
        encoding = "json"

        async def on_connect(self, ws: WebSocket) -> None:
            await ws.accept()
            await ws.send_json({"hello": ws.path_params["name"]})

        async def on_receive(self, ws: WebSocket, data: Any) -> None:
            await ws.send_json({"got": data})

        async def on_disconnect(self, ws: WebSocket, close_code: int) -> None:
            ended.put_nowait(close_code)

    class Pathed(Echo):
        path = "/pathed/{name}"

    app.add_ws_route(Echo.as_route("/consumer/{name}"))
    app.add_ws_route(Pathed)

    async with live_server(app) as server:
        async with client(server.ws + "/consumer/ann") as ws:
            assert json.loads(await within(ws.recv())) == {"hello": "ann"}
            await ws.send('{"a": [1, 2]}')
            assert json.loads(await within(ws.recv())) == {"got": {"a": [1, 2]}}
            await ws.send(b"3")
            assert json.loads(await within(ws.recv())) == {"got": 3}
            await ws.close(4005, "bye")
        assert await within(ended.get()) == 4005
        async with client(server.ws + "/pathed/bob") as ws:
            assert json.loads(await within(ws.recv())) == {"hello": "bob"}
            await ws.send("{bad")
            code, reason = await closed_by_server(ws)
        assert code == 1007
        assert reason.startswith("Message is not valid JSON")
        assert await within(ended.get()) == 1007


# Middleware, events and exception handlers (real refusals, real close frames)


async def test_token_auth_middleware_refuses_and_admits(live_server: Any) -> None:
    from nexios.websockets.middleware import token_auth

    async def verify(token: str) -> dict[str, str] | None:
        return {"id": "u1"} if token == "secret" else None

    app = NexiosApp()
    router = WSRouter(prefix="/secure")
    router.add_ws_middleware(token_auth(verify, user_id=lambda user: user["id"]))

    @router.ws("/me")
    async def me(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(ws.id)

    app.mount_ws_router(router)
    async with live_server(app) as server:
        response = await refused(server.ws + "/secure/me")
        assert (response.status_code, response.body) == (403, b"Authentication required")
        response = await refused(server.ws + "/secure/me?token=wrong")
        assert (response.status_code, response.body) == (403, b"Invalid token")
        headers = {"Authorization": "Bearer secret"}
        async with client(server.ws + "/secure/me", additional_headers=headers) as ws:
            assert await within(ws.recv()) == "u1"
        assert server.errors == []


async def test_middleware_order_events_and_handlers_on_a_real_server(live_server: Any) -> None:
    calls: list[str] = []
    app = NexiosApp()
    router = WSRouter(prefix="/r")

    async def app_mw(ws: WebSocket, call_next: Any) -> None:
        calls.append("app")
        await call_next()

    async def route_mw(ws: WebSocket, next: Any) -> Any:
        calls.append("route")
        return await next(ws)

    @router.middleware
    async def router_mw(ws: WebSocket, call_next: Any) -> None:
        calls.append("router")
        await call_next()

    @router.on("connect")
    async def connected(ws: WebSocket) -> None:
        calls.append("connect")

    @router.on("message")
    async def message(ws: WebSocket, data: Any) -> None:
        calls.append(f"message {data}")

    done: asyncio.Queue[int] = asyncio.Queue()

    @router.on("disconnect")
    async def disconnected(ws: WebSocket) -> None:
        calls.append("disconnect")
        done.put_nowait(ws.close_code or 0)

    @router.exception_handler(KeyError)
    async def missing(ws: WebSocket, exc: Exception) -> None:
        await ws.close(4404, f"missing {exc}")

    @router.ws("/chat", middleware=[route_mw])
    async def chat(ws: WebSocket) -> None:
        await ws.accept()
        text = await ws.receive_text()
        raise KeyError(text)

    app.add_ws_middleware(app_mw)
    app.mount_ws_router(router)
    async with live_server(app) as server, client(server.ws + "/r/chat") as ws:
        await ws.send("room")
        assert await closed_by_server(ws) == (4404, "missing 'room'")
        assert await within(done.get()) == 4404
    assert calls == ["app", "router", "route", "connect", "message room", "disconnect"]


async def test_exception_in_middleware_before_accept_is_a_500(live_server: Any) -> None:
    async def broken(ws: WebSocket, call_next: Any) -> None:
        raise RuntimeError("middleware bug")

    app = NexiosApp()
    app.add_ws_middleware(broken)
    app.add_ws_route("/ws", echo_handler)
    async with live_server(app) as server:
        response = await refused(server.ws + "/ws")
        assert response.status_code == 500
        assert b"middleware bug" not in response.body


async def echo_handler(ws: WebSocket) -> None:
    await ws.accept()
    async for text in ws.iter_text():
        await ws.send_text(text)


async def test_consumer_wrong_frame_type_closes_with_1003(live_server: Any) -> None:
    class TextOnly(WebSocketConsumer):
        encoding = "text"

        async def on_receive(self, ws: WebSocket, data: Any) -> None:
            await ws.send_text(data)

    app = NexiosApp()
    app.add_ws_route(TextOnly.as_route("/text"))
    async with live_server(app) as server, client(server.ws + "/text") as ws:
        await ws.send("fine")
        assert await within(ws.recv()) == "fine"
        await ws.send(b"\x00")
        code, reason = await closed_by_server(ws)
        assert (code, reason) == (1003, "Expected a text message, got a binary one.")


# Lifespan


async def test_startup_and_shutdown_hooks_run_with_the_server(live_server: Any) -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: NexiosApp) -> AsyncIterator[dict[str, str]]:
        events.append("lifespan enter")
        yield {"db": "connected"}
        events.append("lifespan exit")

    app = NexiosApp(lifespan=lifespan, on_startup=[lambda: events.append("sync startup")])

    @app.on_startup
    async def startup() -> None:
        events.append("startup")

    @app.on_shutdown
    async def shutdown() -> None:
        events.append("shutdown")

    @app.ws_route("/db")
    async def db(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(ws.state.db)

    async with live_server(app) as server:
        assert events == ["lifespan enter", "sync startup", "startup"]
        async with client(server.ws + "/db") as ws:
            assert await within(ws.recv()) == "connected"
    assert events == ["lifespan enter", "sync startup", "startup", "shutdown", "lifespan exit"]


async def test_stopping_the_server_closes_open_connections_with_1012(live_server: Any) -> None:
    app = NexiosApp()
    after: asyncio.Queue[tuple[int | None, list[str]]] = asyncio.Queue()
    events: list[str] = []

    @app.on_shutdown
    def shutdown() -> None:
        events.append("shutdown")

    @app.ws_route("/hold")
    async def hold(ws: WebSocket) -> None:
        await ws.accept()
        async for _ in ws.iter_text():
            pass
        after.put_nowait((ws.close_code, list(events)))

    async with live_server(app) as server:
        ws = await client(server.ws + "/hold")
    # uvicorn closed the connection (1012, service restart), then ran the lifespan shutdown.
    await within(ws.wait_closed())
    assert ws.close_code == 1012
    assert await within(after.get()) == (1012, [])
    assert events == ["shutdown"]


async def test_failing_startup_hook_stops_the_server_from_starting(live_server: Any) -> None:
    app = NexiosApp()
    events: list[str] = []

    @app.on_startup
    async def startup() -> None:
        events.append("startup")
        raise RuntimeError("database is down")

    @app.on_shutdown
    async def shutdown() -> None:
        events.append("shutdown")

    with pytest.raises(RuntimeError, match="did not start") as info:
        async with live_server(app):
            pytest.fail("the server started")
    assert type(info.value).__name__ == "LiveServerError"
    assert "Application startup failed: RuntimeError: database is down" in str(info.value)
    assert events == ["startup"]


# Group messages: written at once by nexios' server, but never around a middleware


async def test_group_messages_reach_plain_wrapped_and_compressed_members(
    live_server: Any,
) -> None:
    """The layer writes group messages straight to the socket when it can; a member whose
    ``send`` an ASGI middleware wraps gets them through the middleware, and a compressed
    member gets them compressed."""
    seen_by_middleware: list[str] = []

    class Shout:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            async def shout(message: Any) -> None:
                if message["type"] == "websocket.send" and message.get("text"):
                    seen_by_middleware.append(message["text"])
                    message = {**message, "text": message["text"].upper()}
                await send(message)

            await self.app(scope, receive, shout)

    app = NexiosApp()

    async def member(ws: WebSocket) -> None:
        if ws.query_params.get("deflate"):
            ws.enable_compression()
        await ws.accept()
        await ws.join("room")
        await ws.send_text("joined")
        async for _ in ws.iter_text():
            pass

    app.add_ws_route(WebsocketRoutes("/plain", member))
    app.add_ws_route(WebsocketRoutes("/shout", member, middleware=[Shout]))

    @app.ws_route("/publish")
    async def publish(ws: WebSocket) -> None:
        await ws.accept()
        async for text in ws.iter_text():
            await app.channels.publish("room", text)

    async with (
        live_server(app) as server,
        client(server.ws + "/plain", compression=None) as plain,
        client(server.ws + "/shout", compression=None) as shouted,
        client(server.ws + "/plain?deflate=1") as compressed,
        client(server.ws + "/publish") as publisher,
    ):
        for ws in (plain, shouted, compressed):
            assert (await within(ws.recv())).lower() == "joined"
        assert [e.name for e in compressed.protocol.extensions] == ["permessage-deflate"]
        texts = [f"hello {i} " * (1 + 50 * i) for i in range(4)]  # some over 125 bytes
        for text in texts:
            await publisher.send(text)
        assert [await within(plain.recv()) for _ in texts] == texts
        assert [await within(shouted.recv()) for _ in texts] == [t.upper() for t in texts]
        assert [await within(compressed.recv()) for _ in texts] == texts
    assert seen_by_middleware == ["joined", *texts]
