"""The WebSocket connection, driven through the in-process TestClient."""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from typing import Any

import pytest

from nexios import NexiosApp, WebSocket, WebSocketState
from nexios.exceptions import WebSocketStateError, WebSocketUnsupported
from nexios.testing import TestClient, WebSocketDenied, WebSocketDisconnect
from nexios.types import Receive, Scope, Send
from nexios.websockets import WebSocketException


def make_app(handler: Any, path: str = "/ws") -> NexiosApp:
    app = NexiosApp()
    app.add_ws_route(path, handler)
    return app


def without_extensions(app: NexiosApp) -> Any:
    """The app as a plain ASGI server would run it: no nexios extensions."""

    async def plain(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope = {**scope, "extensions": {}}
        await app(scope, receive, send)

    return plain


# ---------------------------------------------------------------- handshake


def test_accept_with_subprotocol_and_headers() -> None:
    async def handler(ws: WebSocket) -> None:
        assert ws.subprotocols == ["chat", "superchat"]
        await ws.accept(subprotocol="chat", headers={"X-Server": "Nexios"})
        await ws.send_text("hi")

    with (
        TestClient(make_app(handler)) as client,
        client.websocket_connect("/ws", subprotocols=["chat", "superchat"]) as session,
    ):
        assert session.accepted_subprotocol == "chat"
        assert (b"x-server", b"Nexios") in session.extra_headers
        assert session.receive_text() == "hi"


def test_accepting_a_subprotocol_the_client_did_not_offer_is_an_error() -> None:
    errors: list[Exception] = []

    async def handler(ws: WebSocket) -> None:
        try:
            await ws.accept(subprotocol="graphql-ws")
        except WebSocketStateError as exc:
            errors.append(exc)
            raise

    with TestClient(make_app(handler)) as client:
        with pytest.raises(WebSocketDenied) as denied, client.websocket_connect("/ws"):
            pass
    assert denied.value.status_code == 500
    assert "the client offered none" in str(errors[0])


def test_accept_twice_names_the_fix() -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        with pytest.raises(WebSocketStateError, match='call "accept\\(\\)" once'):
            await ws.accept()
        await ws.send_text("ok")

    with TestClient(make_app(handler)) as client, client.websocket_connect("/ws") as session:
        assert session.receive_text() == "ok"


@pytest.mark.parametrize(("code", "status"), [(1008, 403), (1011, 500), (1013, 503), (4000, 403)])
def test_close_before_accept_refuses_the_handshake(code: int, status: int) -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.close(code=code, reason="go away")

    with TestClient(make_app(handler)) as client:
        with pytest.raises(WebSocketDenied) as denied, client.websocket_connect("/ws"):
            pass
    assert denied.value.status_code == status
    assert denied.value.text == "go away"


def test_close_before_accept_without_the_http_response_extension_is_still_a_refusal() -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.close(code=1008, reason="Unauthorized")

    app = make_app(handler)

    async def no_http_response(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            extensions = dict(scope["extensions"])
            del extensions["websocket.http.response"]
            scope = {**scope, "extensions": extensions}
        await app(scope, receive, send)

    with TestClient(no_http_response) as client:
        with pytest.raises(WebSocketDenied) as denied, client.websocket_connect("/ws"):
            pass
    assert denied.value.status_code == 403


def test_handler_that_never_accepts_is_refused() -> None:
    async def handler(ws: WebSocket) -> None:
        return None

    with TestClient(make_app(handler)) as client:
        with pytest.raises(WebSocketDenied) as denied, client.websocket_connect("/ws"):
            pass
    assert denied.value.status_code == 403


def test_handler_that_returns_without_closing_closes_normally() -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text("bye")

    with TestClient(make_app(handler)) as client, client.websocket_connect("/ws") as session:
        assert session.receive_text() == "bye"
        with pytest.raises(WebSocketDisconnect) as closed:
            session.receive_text()
    assert closed.value.code == 1000


def test_close_with_code_and_reason_and_closing_twice() -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        await ws.close(code=1001, reason="Service shutting down")
        await ws.close()  # a second close does nothing
        assert ws.close_code == 1001

    with TestClient(make_app(handler)) as client, client.websocket_connect("/ws") as session:
        with pytest.raises(WebSocketDisconnect) as closed:
            session.receive_text()
    assert (closed.value.code, closed.value.reason) == (1001, "Service shutting down")


# ---------------------------------------------------------------- sending and receiving


def test_send_before_accept_and_after_close_name_the_fix() -> None:
    messages: list[str] = []

    async def handler(ws: WebSocket) -> None:
        try:
            await ws.send_text("too early")
        except WebSocketStateError as exc:
            messages.append(str(exc))
        await ws.accept()
        await ws.close()
        try:
            await ws.send_json({"too": "late"})
        except WebSocketStateError as exc:
            messages.append(str(exc))

    with TestClient(make_app(handler)) as client, client.websocket_connect("/ws") as session:
        with pytest.raises(WebSocketDisconnect):
            session.receive_text()
    assert 'call "await ws.accept()"' in messages[0]
    assert "WebSocket is closed (code 1000)" in messages[1]


def test_receive_before_accept_names_the_fix() -> None:
    seen: list[str] = []

    async def handler(ws: WebSocket) -> None:
        try:
            await ws.receive_text()
        except WebSocketStateError as exc:
            seen.append(str(exc))
        await ws.accept()

    with TestClient(make_app(handler)) as client, client.websocket_connect("/ws"):
        pass
    assert seen == ['WebSocket is not connected: call "await ws.accept()" before receiving.']


def test_text_bytes_and_json_round_trip() -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(await ws.receive_text())
        await ws.send_bytes(await ws.receive_bytes())
        data = await ws.receive_json()
        await ws.send_json({"got": data, "at": datetime.date(2026, 1, 2)})
        await ws.send_json([1, 2], mode="binary")
        binary_json = await ws.receive_json()
        await ws.send_json(binary_json)

    with TestClient(make_app(handler)) as client, client.websocket_connect("/ws") as session:
        session.send_text("héllo")
        assert session.receive_text() == "héllo"
        session.send_bytes(b"\x00\xff")
        assert session.receive_bytes() == b"\x00\xff"
        session.send_json({"a": 1})
        assert session.receive_json() == {"got": {"a": 1}, "at": "2026-01-02"}
        assert session.receive_json(mode="binary") == [1, 2]
        session.send_json({"b": 2}, mode="binary")  # JSON in a binary frame is accepted
        assert session.receive_json() == {"b": 2}


def test_receive_returns_the_raw_message_and_raises_on_disconnect() -> None:
    seen: list[Any] = []

    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                seen.append(await ws.receive())
        except WebSocketDisconnect as exc:
            seen.append(exc.code)
            seen.append(ws.connection_state)

    with TestClient(make_app(handler)) as client:
        with client.websocket_connect("/ws") as session:
            session.send_text("a")
            session.send_bytes(b"b")
            session.close(1001)
    assert seen == [
        {"type": "websocket.receive", "text": "a"},
        {"type": "websocket.receive", "bytes": b"b"},
        1001,
        WebSocketState.DISCONNECTED,
    ]


@pytest.mark.parametrize("kind", ["text", "bytes", "json"])
def test_iterators_end_on_close_and_leave_the_close_code(kind: str) -> None:
    got: list[Any] = []

    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        iterator = {"text": ws.iter_text, "bytes": ws.iter_bytes, "json": ws.iter_json}[kind]
        async for item in iterator():
            got.append(item)
        got.append(("closed", ws.close_code, ws.close_reason))

    with TestClient(make_app(handler)) as client:
        with client.websocket_connect("/ws") as session:
            for i in range(3):
                if kind == "text":
                    session.send_text(str(i))
                elif kind == "bytes":
                    session.send_bytes(bytes([i]))
                else:
                    session.send_json({"i": i})
            session.close(4001, "done")
    expected = {
        "text": ["0", "1", "2"],
        "bytes": [b"\x00", b"\x01", b"\x02"],
        "json": [{"i": 0}, {"i": 1}, {"i": 2}],
    }[kind]
    assert got == [*expected, ("closed", 4001, "done")]


def test_receive_text_on_binary_closes_with_1003() -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        await ws.receive_text()

    with TestClient(make_app(handler)) as client, client.websocket_connect("/ws") as session:
        session.send_bytes(b"\x01")
        with pytest.raises(WebSocketDisconnect) as closed:
            session.receive_text()
    assert closed.value.code == 1003
    assert closed.value.reason == "Expected a text message, got a binary one."


def test_receive_bytes_on_text_closes_with_1003() -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        await ws.receive_bytes()

    with TestClient(make_app(handler)) as client, client.websocket_connect("/ws") as session:
        session.send_text("x")
        with pytest.raises(WebSocketDisconnect) as closed:
            session.receive_text()
    assert closed.value.code == 1003


def test_bad_json_closes_with_1007_unless_caught() -> None:
    async def strict(ws: WebSocket) -> None:
        await ws.accept()
        await ws.receive_json()

    async def forgiving(ws: WebSocket) -> None:
        await ws.accept()
        while True:
            try:
                await ws.send_json({"echo": await ws.receive_json()})
            except json.JSONDecodeError:
                await ws.send_json({"error": "Invalid JSON"})

    app = make_app(strict)
    app.add_ws_route("/forgiving", forgiving)
    with TestClient(app) as client:
        with client.websocket_connect("/ws") as session:
            session.send_text("{not json")
            with pytest.raises(WebSocketDisconnect) as closed:
                session.receive_text()
        assert closed.value.code == 1007
        assert closed.value.reason.startswith("Message is not valid JSON")
        with client.websocket_connect("/forgiving") as session:
            session.send_text("{not json")
            assert session.receive_json() == {"error": "Invalid JSON"}
            session.send_text('{"ok": true}')
            assert session.receive_json() == {"echo": {"ok": True}}


def test_receive_timeout() -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        try:
            await ws.receive_text(timeout=0.05)
        except TimeoutError:
            await ws.send_text("timed out")
        await ws.send_text(await ws.receive_text(timeout=5))

    with TestClient(make_app(handler)) as client, client.websocket_connect("/ws") as session:
        assert session.receive_text() == "timed out"
        session.send_text("still here")
        assert session.receive_text() == "still here"


def test_websocket_exception_closes_with_its_code() -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        raise WebSocketException(4403, "forbidden room")

    with TestClient(make_app(handler)) as client, client.websocket_connect("/ws") as session:
        with pytest.raises(WebSocketDisconnect) as closed:
            session.receive_text()
    assert (closed.value.code, closed.value.reason) == (4403, "forbidden room")


def test_unexpected_exception_closes_with_1011_and_leaks_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        raise ValueError("secret database password")

    with TestClient(make_app(handler)) as client, client.websocket_connect("/ws") as session:
        with pytest.raises(WebSocketDisconnect) as closed:
            session.receive_text()
    assert (closed.value.code, closed.value.reason) == (1011, "Internal error")
    assert "secret database password" in caplog.text  # logged for the developer


def test_exception_before_accept_is_a_500_refusal() -> None:
    async def handler(ws: WebSocket) -> None:
        raise RuntimeError("boom")

    with TestClient(make_app(handler)) as client:
        with pytest.raises(WebSocketDenied) as denied, client.websocket_connect("/ws"):
            pass
    assert denied.value.status_code == 500
    assert "boom" not in denied.value.text


# ---------------------------------------------------------------- the scope


def test_scope_views() -> None:
    seen: dict[str, Any] = {}

    async def handler(ws: WebSocket, room: str) -> None:
        seen["room"] = room
        seen["path_params"] = ws.path_params
        seen["auth"] = ws.headers.get("authorization")
        seen["AUTH"] = ws.headers["Authorization"]
        seen["raw"] = {k.decode(): v.decode() for k, v in ws.headers}
        seen["cookies"] = ws.cookies
        seen["token"] = ws.query_params.get("token")
        seen["query"] = str(ws.query_params)
        seen["client"] = ws.client
        seen["url"] = str(ws.url)
        seen["scope_type"] = ws.scope["type"]
        await ws.accept()

    app = make_app(handler, "/rooms/{room}")
    with (
        TestClient(app) as client,
        client.websocket_connect(
            "/rooms/lobby?token=12345&user=dunamis",
            headers={"Authorization": "Bearer t", "Cookie": 'session=abc; theme="dark"'},
        ),
    ):
        pass
    assert seen["room"] == "lobby"
    assert seen["path_params"] == {"room": "lobby"}
    assert seen["auth"] == seen["AUTH"] == "Bearer t"
    assert seen["raw"]["authorization"] == "Bearer t"
    assert seen["cookies"] == {"session": "abc", "theme": "dark"}
    assert seen["token"] == "12345"
    assert seen["query"] == "token=12345&user=dunamis"
    assert seen["client"] == ("testclient", 50000)
    assert seen["client"].host == "testclient"
    assert seen["url"] == "ws://testserver/rooms/lobby?token=12345&user=dunamis"
    assert seen["scope_type"] == "websocket"


def test_state_is_storage_and_compares_with_the_connection_state() -> None:
    seen: list[Any] = []

    async def handler(ws: WebSocket) -> None:
        seen.append(ws.state == WebSocketState.CONNECTED)
        await ws.accept()
        ws.state["user_id"] = 42
        ws.state.room = "general"
        seen.append(
            (ws.state.user_id, ws.state["room"], ws.state.get("missing", "-"), "room" in ws.state)
        )
        seen.append(ws.state == WebSocketState.CONNECTED)
        seen.append((ws.client_state, ws.application_state, ws.connection_state))
        with pytest.raises(AttributeError, match=r"state.get\('nope'\)"):
            _ = ws.state.nope
        await ws.close()
        seen.append(ws.state == WebSocketState.DISCONNECTED)

    with TestClient(make_app(handler)) as client, client.websocket_connect("/ws") as session:
        with pytest.raises(WebSocketDisconnect):
            session.receive_text()
    assert seen == [
        False,
        (42, "general", "-", True),
        True,
        (WebSocketState.CONNECTED, WebSocketState.CONNECTED, WebSocketState.CONNECTED),
        True,
    ]


def test_id_is_a_uuid_unless_middleware_sets_it() -> None:
    ids: list[str] = []

    async def handler(ws: WebSocket) -> None:
        ids.append(ws.id)
        await ws.accept()

    async def as_user(ws: WebSocket, call_next: Any) -> None:
        ws.id = ws.query_params.get("user", ws.id)
        await call_next()

    app = make_app(handler)
    app.add_ws_middleware(as_user)
    with TestClient(app) as client:
        with client.websocket_connect("/ws?user=alice"):
            pass
        with client.websocket_connect("/ws"):
            pass
    assert ids[0] == "alice"
    assert uuid.UUID(ids[1]).version == 4


# ---------------------------------------------------------------- ping and pong


def test_send_ping_is_answered_with_a_pong() -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_ping(b"are you there")
        await ws.send_text((await ws.receive_pong(timeout=5)).decode())

    with TestClient(make_app(handler)) as client, client.websocket_connect("/ws") as session:
        assert session.receive_ping() == b"are you there"
        assert session.receive_text() == "are you there"


def test_receive_ping_sees_the_clients_ping_and_send_pong_reaches_it() -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        waiting = asyncio.create_task(ws.receive_ping())
        await asyncio.sleep(0)  # let receive_ping ask the server to forward pings
        await ws.send_text("ready")
        payload = await asyncio.wait_for(waiting, 5)
        await ws.send_pong(b"heartbeat:" + payload)

    with TestClient(make_app(handler)) as client, client.websocket_connect("/ws") as session:
        assert session.receive_text() == "ready"
        session.send_ping(b"p1")
        assert session.receive_pong() == b"p1"  # the automatic answer
        assert session.receive_pong() == b"heartbeat:p1"


def test_control_frames_do_not_disturb_a_concurrent_data_loop() -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        echo_task = asyncio.create_task(echo(ws))
        await ws.send_ping(b"1")
        pong = await ws.receive_pong(timeout=5)
        await ws.send_text(f"pong {pong.decode()}")
        await echo_task

    async def echo(ws: WebSocket) -> None:
        async for text in ws.iter_text():
            await ws.send_text(f"echo {text}")

    with TestClient(make_app(handler)) as client, client.websocket_connect("/ws") as session:
        session.send_text("a")
        assert session.receive_ping() == b"1"
        session.send_text("b")
        got = {session.receive_text(), session.receive_text(), session.receive_text()}
        assert got == {"echo a", "echo b", "pong 1"}


def test_messages_read_while_waiting_for_a_pong_are_kept_in_order() -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_ping(b"x")
        await ws.send_text("pinged")
        await ws.receive_pong(timeout=5)
        first = await ws.receive_text()
        second = await ws.receive_text()
        await ws.send_text(f"{first},{second}")

    with TestClient(make_app(handler)) as client, client.websocket_connect("/ws") as session:
        assert session.receive_text() == "pinged"
        session.send_text("one")
        session.send_text("two")
        assert session.receive_text() == "one,two"


def test_ping_payload_over_125_bytes_is_refused() -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        with pytest.raises(ValueError, match="at most 125 bytes"):
            await ws.send_ping(b"x" * 126)
        await ws.send_text("ok")

    with TestClient(make_app(handler)) as client, client.websocket_connect("/ws") as session:
        assert session.receive_text() == "ok"


def test_several_tasks_receiving_at_once_each_get_a_message() -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_ping(b"p")
        pong = asyncio.create_task(ws.receive_pong())
        first = asyncio.create_task(ws.receive_text())
        second = asyncio.create_task(ws.receive_text())
        await ws.send_text("ready")
        texts = sorted(await asyncio.wait_for(asyncio.gather(first, second), 5))
        await ws.send_text(f"{texts} {(await asyncio.wait_for(pong, 5)).decode()}")

    with TestClient(make_app(handler)) as client, client.websocket_connect("/ws") as session:
        assert session.receive_text() == "ready"
        session.send_text("one")
        session.send_text("two")
        assert session.receive_text() == "['one', 'two'] p"


def test_a_waiting_receive_sees_the_disconnect_read_by_another_task() -> None:
    outcome: list[Any] = []

    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        pong = asyncio.create_task(ws.receive_pong())
        await asyncio.sleep(0)  # the pong waiter now reads
        await ws.send_text("ready")
        try:
            await asyncio.wait_for(ws.receive_text(), 5)
        except WebSocketDisconnect as exc:
            outcome.append(exc.code)
        try:
            await asyncio.wait_for(pong, 5)
        except WebSocketDisconnect as exc:
            outcome.append(exc.code)

    with TestClient(make_app(handler)) as client:
        with client.websocket_connect("/ws") as session:
            assert session.receive_text() == "ready"
            session.close(4002)
    assert outcome == [4002, 4002]


def test_ping_and_pong_on_a_server_without_the_extension_raise() -> None:
    errors: list[str] = []

    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        for call in (ws.send_ping, ws.send_pong, ws.receive_ping, ws.receive_pong):
            try:
                await call()
            except WebSocketUnsupported as exc:
                errors.append(str(exc))

    with TestClient(without_extensions(make_app(handler))) as client:
        with client.websocket_connect("/ws"):
            pass
    assert len(errors) == 4
    assert all("app.run()" in error for error in errors)


# ---------------------------------------------------------------- compression


def test_enable_compression_before_accept() -> None:
    answers: list[bool] = []

    async def handler(ws: WebSocket) -> None:
        answers.append(ws.enable_compression())
        await ws.accept()
        answers.append(ws.compression)
        answers.append(ws.enable_compression())

    with TestClient(make_app(handler)) as client:
        with client.websocket_connect("/ws", compression=True) as session:
            assert session.compression is True
    assert answers == [True, True, True]


def test_enable_compression_when_the_client_did_not_offer_it() -> None:
    answers: list[Any] = []

    async def handler(ws: WebSocket) -> None:
        answers.append(ws.enable_compression())
        await ws.accept()
        try:
            ws.enable_compression()
        except WebSocketStateError as exc:
            answers.append(str(exc))

    with TestClient(make_app(handler)) as client:
        with client.websocket_connect("/ws") as session:
            assert session.compression is False
    assert answers[0] is False
    assert "before ws.accept()" in answers[1]


def test_enable_compression_after_accept_names_the_fix() -> None:
    errors: list[str] = []

    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        try:
            ws.enable_compression()
        except WebSocketStateError as exc:
            errors.append(str(exc))

    with TestClient(make_app(handler)) as client:
        with client.websocket_connect("/ws", compression=True) as session:
            assert session.compression is False
    assert "call ws.enable_compression() before ws.accept()" in errors[0]


def test_enable_compression_on_a_server_without_the_extension_raises() -> None:
    errors: list[str] = []

    async def handler(ws: WebSocket) -> None:
        try:
            ws.enable_compression()
        except WebSocketUnsupported as exc:
            errors.append(str(exc))
        await ws.accept()

    with TestClient(without_extensions(make_app(handler))) as client:
        with client.websocket_connect("/ws"):
            pass
    assert "--ws-per-message-deflate" in errors[0]


# ---------------------------------------------------------------- the async test client


async def test_async_client_several_sessions_at_once() -> None:
    app = NexiosApp()

    @app.ws_route("/echo/{name}")
    async def echo(ws: WebSocket, name: str) -> None:
        await ws.accept()
        async for text in ws.iter_text():
            await ws.send_text(f"{name}: {text}")

    async with TestClient(app) as client:
        async with (
            client.websocket_connect("/echo/a") as a,
            client.websocket_connect("/echo/b") as b,
        ):
            await a.send_text("1")
            await b.send_text("2")
            assert await b.receive_text() == "b: 2"
            assert await a.receive_text() == "a: 1"
