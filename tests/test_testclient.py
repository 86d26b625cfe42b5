"""nexios.testing.TestClient, exercised with tiny raw ASGI apps (no framework classes)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from nexios.testing import (
    AsyncTestClient,
    LifespanFailed,
    TestClient,
    WebSocketDenied,
    WebSocketDisconnect,
)
from nexios.types import Message, Receive, Scope, Send

# ----------------------------------------------------------------------------- apps


async def lifespan_unsupported(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("this app only speaks HTTP and WebSocket")


async def http_echo(scope: Scope, receive: Receive, send: Send) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    payload = {
        "method": scope["method"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode(),
        "query": scope["query_string"].decode(),
        "body": body.decode(),
        "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
        "state": sorted(scope["state"]),
        "client": list(scope["client"]),
        "server": list(scope["server"]),
        "scheme": scope["scheme"],
    }
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 201 if scope["method"] == "POST" else 200,
            "headers": [(b"content-type", b"application/json"), (b"x-app", b"yes")],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def ws_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Echo text as "Echo: ...", bytes reversed; "close" closes with 4000."""
    message = await receive()
    assert message["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            if message["text"] == "close":
                await send({"type": "websocket.close", "code": 4000, "reason": "asked to"})
                return
            await send({"type": "websocket.send", "text": f"Echo: {message['text']}"})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"][::-1]})


async def ws_json(scope: Scope, receive: Receive, send: Send) -> None:
    """The app of seed 004's JSON test."""
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        raw = message.get("text") or message["bytes"].decode()
        data = json.loads(raw)
        if data.get("type") == "ping":
            await send({"type": "websocket.send", "text": json.dumps({"type": "pong"})})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The default app: lifespan-less, HTTP echo, WebSocket echo."""
    if scope["type"] == "lifespan":
        await lifespan_unsupported(scope, receive, send)
    elif scope["type"] == "http":
        await http_echo(scope, receive, send)
    else:
        await ws_echo(scope, receive, send)


class LifespanApp:
    """Runs startup/shutdown hooks that record themselves and fill the lifespan state."""

    def __init__(self, fail_startup: str | None = None, fail_shutdown: str | None = None):
        self.events: list[str] = []
        self.scopes: list[Scope] = []
        self.fail_startup = fail_startup
        self.fail_shutdown = fail_shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            assert message["type"] == "lifespan.startup"
            self.events.append("startup")
            if self.fail_startup is not None:
                await send({"type": "lifespan.startup.failed", "message": self.fail_startup})
                return
            scope["state"]["db"] = "connected"
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            assert message["type"] == "lifespan.shutdown"
            self.events.append("shutdown")
            if self.fail_shutdown is not None:
                await send({"type": "lifespan.shutdown.failed", "message": self.fail_shutdown})
                return
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.scopes.append(scope)
        if scope["type"] == "http":
            await http_echo(scope, receive, send)
        else:
            await receive()
            await send({"type": "websocket.accept"})
            scope["state"]["mine"] = True  # a per-connection copy: not seen by others
            await send({"type": "websocket.send", "text": json.dumps(sorted(scope["state"]))})
            await receive()


class Room:
    """A broadcast app: every text a member sends goes to every member."""

    def __init__(self) -> None:
        self.members: list[Send] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError("WebSocket only")
        await receive()
        await send({"type": "websocket.accept"})
        self.members.append(send)
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                for member in list(self.members):
                    await member({"type": "websocket.send", "text": message["text"]})
        finally:
            self.members.remove(send)


class Recorder:
    """Records every event the app receives; accepts with the given accept message."""

    def __init__(self, accept: Message | None = None, then: list[Message] | None = None):
        self.accept = accept or {"type": "websocket.accept"}
        self.then = then or []
        self.received: list[Message] = []
        self.scope: Scope = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError("WebSocket only")
        self.scope = scope
        self.received.append(await receive())
        await send(self.accept)
        for message in self.then:
            await send(message)
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] == "websocket.disconnect":
                return
            if message["type"] == "websocket.receive":
                # Acknowledge data so the test can wait for the app to have seen it.
                await send({"type": "websocket.send", "text": "ack"})


def control_app(*, control: bool) -> Recorder:
    return Recorder(
        accept={"type": "websocket.accept", "nexios.control": control},
        then=[
            {"type": "websocket.send", "text": "before"},
            {"type": "websocket.ping", "bytes": b"p1"},
            {"type": "websocket.pong", "bytes": b"heartbeat"},
            {"type": "websocket.send", "text": "after"},
        ],
    )


# ------------------------------------------------------------ seed 004, as written


@pytest.mark.asyncio
async def test_websocket_echo():
    async def websocket_handler(scope: Scope, receive: Receive, send: Send) -> None:
        await ws_echo(scope, receive, send)

    app = websocket_handler

    async with TestClient(app) as client:
        async with client.websocket_connect("/ws") as websocket:
            await websocket.send_text("Hello")
            response = await websocket.receive_text()
            assert response == "Echo: Hello"


@pytest.mark.asyncio
async def test_websocket_json():
    app = ws_json

    async with TestClient(app) as client:
        async with client.websocket_connect("/api") as websocket:
            await websocket.send_json({"type": "ping"})
            response = await websocket.receive_json()
            assert response == {"type": "pong"}


# ------------------------------------------------------------------------ echo


async def test_async_echo_text_bytes_json() -> None:
    async with TestClient(app) as client:
        assert isinstance(client, AsyncTestClient)
        async with client.websocket_connect("/ws") as websocket:
            await websocket.send_text("a")
            assert await websocket.receive_text() == "Echo: a"
            await websocket.send_bytes(b"abc")
            assert await websocket.receive_bytes() == b"cba"
            await websocket.send_text("b")
            assert await websocket.receive() == {"type": "websocket.send", "text": "Echo: b"}


async def test_async_json_binary_mode() -> None:
    async with TestClient(ws_json) as client, client.websocket_connect("/api") as websocket:
        await websocket.send_json({"type": "ping"}, mode="binary")
        assert await websocket.receive_json(mode="text") == {"type": "pong"}


def test_sync_echo_and_json() -> None:
    with TestClient(app) as client, client.websocket_connect("/ws") as websocket:
        websocket.send_text("Hello")
        assert websocket.receive_text() == "Echo: Hello"
        websocket.send_bytes(b"xy")
        assert websocket.receive_bytes() == b"yx"
    with TestClient(ws_json) as client, client.websocket_connect("/api") as websocket:
        websocket.send_json({"type": "ping"})
        assert websocket.receive_json() == {"type": "pong"}


def test_sync_without_with_block() -> None:
    client = TestClient(app)
    assert client.get("/plain").json()["path"] == "/plain"
    with client.websocket_connect("/ws") as websocket:
        websocket.send_text("x")
        assert websocket.receive_text() == "Echo: x"
        # HTTP while a session is open shares its event loop.
        assert client.get("/again").status_code == 200


async def test_async_client_without_async_with() -> None:
    client = AsyncTestClient(app)
    assert (await client.get("/x")).json()["path"] == "/x"
    async with client.websocket_connect("/ws") as websocket:
        await websocket.send_text("y")
        assert await websocket.receive_text() == "Echo: y"


# ---------------------------------------------------------------- several sessions


async def test_async_several_sessions() -> None:
    room = Room()
    async with (
        TestClient(room) as client,
        client.websocket_connect("/room") as alice,
        client.websocket_connect("/room") as bob,
    ):
        await alice.send_text("hi from alice")
        assert await alice.receive_text() == "hi from alice"
        assert await bob.receive_text() == "hi from alice"
        await bob.send_text("hi from bob")
        assert await alice.receive_text() == "hi from bob"
        assert await bob.receive_text() == "hi from bob"
    assert room.members == []


def test_sync_several_sessions() -> None:
    room = Room()
    with (
        TestClient(room) as client,
        client.websocket_connect("/room") as alice,
        client.websocket_connect("/room") as bob,
    ):
        alice.send_text("one")
        assert bob.receive_text() == "one"
        assert alice.receive_text() == "one"
        with client.websocket_connect("/room") as carol:
            bob.send_text("two")
            assert carol.receive_text() == "two"
            assert alice.receive_text() == "two"
            assert bob.receive_text() == "two"
    assert room.members == []


def test_sync_several_sessions_without_with_share_one_loop() -> None:
    room = Room()
    client = TestClient(room)
    with client.websocket_connect("/room") as alice, client.websocket_connect("/room") as bob:
        alice.send_text("shared")
        assert bob.receive_text() == "shared"


# ------------------------------------------------------------------------ lifespan


async def test_async_lifespan_hooks_and_state() -> None:
    lifespan_app = LifespanApp()
    async with TestClient(lifespan_app) as client:
        assert lifespan_app.events == ["startup"]
        assert client.app_state == {"db": "connected"}
        response = await client.get("/")
        assert response.json()["state"] == ["db"]
        async with client.websocket_connect("/ws") as websocket:
            assert await websocket.receive_json() == ["db", "mine"]
        # The connection's additions stayed in its own copy.
        assert client.app_state == {"db": "connected"}
        assert lifespan_app.events == ["startup"]
    assert lifespan_app.events == ["startup", "shutdown"]


def test_sync_lifespan_hooks_and_state() -> None:
    lifespan_app = LifespanApp()
    with TestClient(lifespan_app) as client:
        assert lifespan_app.events == ["startup"]
        assert client.get("/").json()["state"] == ["db"]
        with client.websocket_connect("/ws") as websocket:
            assert websocket.receive_json() == ["db", "mine"]
    assert lifespan_app.events == ["startup", "shutdown"]


def test_sync_without_with_runs_no_lifespan() -> None:
    lifespan_app = LifespanApp()
    client = TestClient(lifespan_app)
    assert client.get("/").json()["state"] == []
    assert lifespan_app.events == []


async def test_async_startup_failure_raises() -> None:
    with pytest.raises(LifespanFailed, match="database is down") as info:
        async with TestClient(LifespanApp(fail_startup="database is down")):
            pytest.fail("the block must not run")
    assert info.value.phase == "startup"
    assert info.value.message == "database is down"


def test_sync_startup_failure_raises() -> None:
    client = TestClient(LifespanApp(fail_startup="no config"))
    with pytest.raises(LifespanFailed, match="no config"), client:
        pytest.fail("the block must not run")


async def test_shutdown_failure_raises() -> None:
    with pytest.raises(LifespanFailed, match="flush failed") as info:
        async with TestClient(LifespanApp(fail_shutdown="flush failed")):
            pass
    assert info.value.phase == "shutdown"
    with (
        pytest.raises(LifespanFailed, match="flush failed"),
        TestClient(LifespanApp(fail_shutdown="flush failed")),
    ):
        pass


async def test_lifespan_unsupported_is_tolerated() -> None:
    async with TestClient(app) as client:
        assert (await client.get("/")).status_code == 200
    with TestClient(app) as sync_client:
        assert sync_client.get("/").status_code == 200


async def test_lifespan_crash_before_startup_complete_is_tolerated() -> None:
    # Like uvicorn's lifespan="auto": an app that fails on the lifespan scope before
    # answering it (here after reading lifespan.startup) is taken not to support it.
    async def websocket_only(scope: Scope, receive: Receive, send: Send) -> None:
        await ws_echo(scope, receive, send)

    async with TestClient(websocket_only) as client, client.websocket_connect("/") as ws:
        await ws.send_text("still works")
        assert await ws.receive_text() == "Echo: still works"


async def test_lifespan_crash_after_startup_is_reraised_at_exit() -> None:
    async def crashing_shutdown(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        raise ValueError("shutdown hook crashed")

    with pytest.raises(ValueError, match="shutdown hook crashed"):
        async with TestClient(crashing_shutdown):
            pass


# ---------------------------------------------------------------------------- HTTP


async def test_async_http_methods() -> None:
    async with TestClient(app, client=("10.0.0.1", 1234)) as client:
        response = await client.get("/a%20b/c", params={"q": "1 2"}, headers={"X-Token": "t"})
        assert isinstance(response, httpx.Response)
        data = response.json()
        assert data["path"] == "/a b/c"
        assert data["raw_path"] == "/a%20b/c"
        assert data["query"] == "q=1+2"
        assert data["headers"]["x-token"] == "t"
        assert data["headers"]["host"] == "testserver"
        assert data["client"] == ["10.0.0.1", 1234]
        assert data["server"] == ["testserver", 80]
        assert data["scheme"] == "http"
        assert response.headers["x-app"] == "yes"

        response = await client.post("/p", content=b"payload")
        assert response.status_code == 201
        assert response.json()["body"] == "payload"
        for method in ("put", "patch", "delete", "options"):
            response = await getattr(client, method)("/m")
            assert response.json()["method"] == method.upper()
        assert (await client.head("/h")).status_code == 200
        assert (await client.request("PURGE", "/r")).json()["method"] == "PURGE"


def test_sync_http_methods() -> None:
    with TestClient(app, base_url="https://example.org") as client:
        response = client.post("/items", json={"a": 1})
        assert response.status_code == 201
        data = response.json()
        assert json.loads(data["body"]) == {"a": 1}
        assert data["scheme"] == "https"
        assert data["server"] == ["example.org", 443]
        for method in ("get", "put", "patch", "delete", "options"):
            assert getattr(client, method)("/m").json()["method"] == method.upper()
        assert client.head("/h").status_code == 200


async def test_http_app_exception() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan")
        raise ZeroDivisionError("boom")

    async with TestClient(broken) as client:
        with pytest.raises(ZeroDivisionError):
            await client.get("/")
    async with TestClient(broken, raise_server_exceptions=False) as client:
        response = await client.get("/")
        assert response.status_code == 500
    with TestClient(broken) as sync_client, pytest.raises(ZeroDivisionError):
        sync_client.get("/")


# --------------------------------------------------------------------------- scope


async def test_websocket_scope() -> None:
    recorder = Recorder()
    async with (
        TestClient(recorder, client=("1.2.3.4", 5)) as client,
        client.websocket_connect(
            "/chat/a%20room?token=abc&x=%20",
            subprotocols=["chat.v2", "chat.v1"],
            headers={"Authorization": "Bearer t", "Cookie": "session=s1"},
        ),
    ):
        pass
    scope = recorder.scope
    assert scope["type"] == "websocket"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "ws"
    assert scope["server"] == ("testserver", 80)
    assert scope["client"] == ("1.2.3.4", 5)
    assert scope["root_path"] == ""
    assert scope["path"] == "/chat/a room"
    assert scope["raw_path"] == b"/chat/a%20room"
    assert scope["query_string"] == b"token=abc&x=%20"
    assert scope["subprotocols"] == ["chat.v2", "chat.v1"]
    assert scope["state"] == {}
    assert scope["extensions"] == {
        "websocket.http.response": {},
        "nexios.websocket.control": {},
        "nexios.websocket.permessage_deflate": {"offered": False},
    }
    headers = scope["headers"]
    assert all(name == name.lower() for name, _ in headers)
    header_map = dict(headers)
    assert header_map[b"host"] == b"testserver"
    assert header_map[b"sec-websocket-version"] == b"13"
    assert len(header_map[b"sec-websocket-key"]) == 24
    assert header_map[b"connection"].lower() == b"upgrade"
    assert header_map[b"upgrade"] == b"websocket"
    assert header_map[b"authorization"] == b"Bearer t"
    assert header_map[b"cookie"] == b"session=s1"
    assert header_map[b"sec-websocket-protocol"] == b"chat.v2, chat.v1"
    assert recorder.received[0] == {"type": "websocket.connect"}


def test_websocket_scope_sync_wss_params_and_cookie_jar() -> None:
    recorder = Recorder()
    client = TestClient(recorder, base_url="https://secure.test:8443", cookies={"sid": "42"})
    with client.websocket_connect("/ws", params={"room": "1"}) as websocket:
        assert websocket.scope is recorder.scope
    scope = recorder.scope
    assert scope["scheme"] == "wss"
    assert scope["server"] == ("secure.test", 8443)
    assert scope["query_string"] == b"room=1"
    assert dict(scope["headers"])[b"cookie"] == b"sid=42"
    assert scope["subprotocols"] == []


async def test_accepted_subprotocol_and_headers() -> None:
    recorder = Recorder(
        accept={
            "type": "websocket.accept",
            "subprotocol": "chat.v1",
            "headers": [(b"x-server", b"nexios")],
        }
    )
    async with (
        TestClient(recorder) as client,
        client.websocket_connect("/ws", subprotocols=["chat.v2", "chat.v1"]) as websocket,
    ):
        assert websocket.accepted_subprotocol == "chat.v1"
        assert websocket.extra_headers == [(b"x-server", b"nexios")]
    with (
        TestClient(recorder) as sync_client,
        sync_client.websocket_connect("/ws", subprotocols=["chat.v1"]) as sync_ws,
    ):
        assert sync_ws.accepted_subprotocol == "chat.v1"
        assert sync_ws.extra_headers == [(b"x-server", b"nexios")]


async def test_unoffered_subprotocol_fails_the_handshake() -> None:
    recorder = Recorder(accept={"type": "websocket.accept", "subprotocol": "nope"})
    async with TestClient(recorder) as client:
        with pytest.raises(RuntimeError, match="did not offer"):
            async with client.websocket_connect("/ws", subprotocols=["chat"]):
                pass


async def test_compression_offer_and_negotiation() -> None:
    asks = Recorder(accept={"type": "websocket.accept", "nexios.permessage_deflate": True})
    async with TestClient(asks) as client:
        async with client.websocket_connect("/ws", compression=True) as websocket:
            assert websocket.compression is True
        assert asks.scope["extensions"]["nexios.websocket.permessage_deflate"] == {"offered": True}
        assert b"permessage-deflate" in dict(asks.scope["headers"])[b"sec-websocket-extensions"]
        async with client.websocket_connect("/ws") as websocket:
            assert websocket.compression is False  # asked, but not offered
    declines = Recorder()
    with (
        TestClient(declines) as sync_client,
        sync_client.websocket_connect("/ws", compression=True) as sync_ws,
    ):
        assert sync_ws.compression is False  # offered, but not asked for


# --------------------------------------------------------------- close and refusal


async def test_server_close_raises_websocket_disconnect() -> None:
    async with TestClient(app) as client, client.websocket_connect("/ws") as websocket:
        await websocket.send_text("one")
        await websocket.send_text("close")
        # Data sent before the close is read first.
        assert await websocket.receive_text() == "Echo: one"
        with pytest.raises(WebSocketDisconnect) as info:
            await websocket.receive_text()
        assert (info.value.code, info.value.reason) == (4000, "asked to")
        assert (websocket.close_code, websocket.close_reason) == (4000, "asked to")
        # Closed stays closed, for every kind of receive.
        with pytest.raises(WebSocketDisconnect):
            await websocket.receive()
        with pytest.raises(WebSocketDisconnect):
            await websocket.receive_ping()


def test_sync_server_close_raises_websocket_disconnect() -> None:
    with TestClient(app) as client, client.websocket_connect("/ws") as websocket:
        websocket.send_text("close")
        with pytest.raises(WebSocketDisconnect) as info:
            websocket.receive_bytes()
        assert info.value.code == 4000
        assert info.value.reason == "asked to"


async def test_app_returning_after_accept_drops_the_connection() -> None:
    async def quits(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "bye"})

    async with TestClient(quits) as client, client.websocket_connect("/ws") as websocket:
        assert await websocket.receive_text() == "bye"
        with pytest.raises(WebSocketDisconnect) as info:
            await websocket.receive_text()
        assert info.value.code == 1006


async def close_before_accept(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "websocket.close", "code": 1008})
    assert await receive() == {"type": "websocket.disconnect", "code": 1006}


async def denial_response(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send(
        {
            "type": "websocket.http.response.start",
            "status": 401,
            "headers": [(b"www-authenticate", b"Bearer"), (b"content-type", b"application/json")],
        }
    )
    await send({"type": "websocket.http.response.body", "body": b'{"error":', "more_body": True})
    await send({"type": "websocket.http.response.body", "body": b' "no token"}'})


async def test_refused_handshake() -> None:
    async with TestClient(close_before_accept) as client:
        with pytest.raises(WebSocketDenied) as info:
            async with client.websocket_connect("/ws"):
                pytest.fail("the block must not run")
        assert info.value.status_code == 403
        assert info.value.body == b""

    async with TestClient(denial_response) as client:
        with pytest.raises(WebSocketDenied) as info:
            async with client.websocket_connect("/ws"):
                pytest.fail("the block must not run")
        assert info.value.status_code == 401
        assert info.value.headers["www-authenticate"] == "Bearer"
        assert info.value.body == b'{"error": "no token"}'
        assert info.value.json() == {"error": "no token"}


def test_sync_refused_handshake() -> None:
    with TestClient(close_before_accept) as client:
        with pytest.raises(WebSocketDenied) as info, client.websocket_connect("/ws"):
            pytest.fail("the block must not run")
        assert info.value.status_code == 403
    with pytest.raises(WebSocketDenied) as info, TestClient(denial_response).websocket_connect("/"):
        pytest.fail("the block must not run")
    assert info.value.status_code == 401
    assert info.value.text == '{"error": "no token"}'


async def test_app_returning_without_accepting_is_refused_with_500() -> None:
    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    async with TestClient(silent) as client:
        with pytest.raises(WebSocketDenied) as info:
            async with client.websocket_connect("/ws"):
                pass
        assert info.value.status_code == 500


# --------------------------------------------------------------------- client close


async def test_exit_tells_the_app_the_client_left() -> None:
    recorder = Recorder()
    async with TestClient(recorder) as client:
        async with client.websocket_connect("/ws") as websocket:
            await websocket.send_text("hi")
            assert await websocket.receive_text() == "ack"
        assert recorder.received[-1] == {"type": "websocket.disconnect", "code": 1000, "reason": ""}


def test_sync_close_with_code_and_reason() -> None:
    recorder = Recorder()
    with TestClient(recorder) as client, client.websocket_connect("/ws") as websocket:
        websocket.close(code=4001, reason="done")
        # close() waits for the app to finish.
        assert recorder.received[-1] == {
            "type": "websocket.disconnect",
            "code": 4001,
            "reason": "done",
        }
        assert websocket.close_code == 4001
        with pytest.raises(RuntimeError, match="closed by the test"):
            websocket.send_text("too late")
        websocket.close()  # closing again does nothing


async def test_close_codes_are_checked() -> None:
    async def bad_close(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError("WebSocket only")
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1006})

    async with TestClient(Recorder()) as client, client.websocket_connect("/ws") as websocket:
        with pytest.raises(ValueError, match="close code 1005"):
            await websocket.close(code=1005)
        with pytest.raises(ValueError, match="at most 123"):
            await websocket.close(reason="x" * 124)
    async with TestClient(bad_close) as client:
        with pytest.raises(ValueError, match="close code 1006"):
            async with client.websocket_connect("/ws") as websocket:
                await websocket.receive_text()


async def test_app_send_after_client_left_raises_client_disconnected() -> None:
    seen: list[str] = []

    async def keeps_talking(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"
        try:
            await send({"type": "websocket.send", "text": "anyone?"})
        except OSError as exc:  # uvicorn's ClientDisconnected
            seen.append(type(exc).__name__)
            raise

    async with TestClient(keeps_talking) as client, client.websocket_connect("/ws"):
        pass
    assert seen == ["ClientDisconnected"]


# ------------------------------------------------------------------------ timeouts


async def test_receive_timeout_is_quick_and_says_what() -> None:
    async with TestClient(Recorder()) as client, client.websocket_connect("/ws") as websocket:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"0\.1 s waiting for a text message"):
            await websocket.receive_text(timeout=0.1)
        assert time.monotonic() - started < 2
        with pytest.raises(TimeoutError, match="a ping"):
            await websocket.receive_ping(timeout=0.05)


def test_sync_receive_timeout_from_client_default() -> None:
    with TestClient(Recorder(), timeout=0.1) as client, client.websocket_connect("/ws") as ws:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="a binary message"):
            ws.receive_bytes()
        assert time.monotonic() - started < 2


async def test_handshake_timeout() -> None:
    seen: list[Message] = []

    async def never_answers(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan")
        await receive()
        seen.append(await receive())  # the test gives up: the connection is lost

    async with TestClient(never_answers, timeout=0.1) as client:
        with pytest.raises(TimeoutError, match="accept or refuse the handshake"):
            async with client.websocket_connect("/ws"):
                pass
    assert seen == [{"type": "websocket.disconnect", "code": 1006}]


async def test_lifespan_timeout() -> None:
    async def never_starts(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await receive()

    with pytest.raises(TimeoutError, match=r"'lifespan\.startup'"):
        async with TestClient(never_starts, timeout=0.1):
            pass


# ------------------------------------------------------------------ control frames


async def test_control_frames_with_control_extension() -> None:
    recorder = control_app(control=True)
    async with TestClient(recorder) as client, client.websocket_connect("/ws") as websocket:
        # Data receives skip the control frames.
        assert await websocket.receive_text() == "before"
        assert await websocket.receive_text() == "after"
        assert await websocket.receive_ping() == b"p1"
        assert await websocket.receive_pong() == b"heartbeat"

        await websocket.send_ping(b"t1")
        assert await websocket.receive_pong() == b"t1"  # answered at once, like a server
        await websocket.send_pong(b"t2")
        await websocket.send_text("sync")
        assert await websocket.receive_text() == "ack"
    assert recorder.received[1:5] == [
        {"type": "websocket.pong", "bytes": b"p1"},  # the client's automatic answer
        {"type": "websocket.ping", "bytes": b"t1"},
        {"type": "websocket.pong", "bytes": b"t2"},
        {"type": "websocket.receive", "text": "sync"},
    ]


def test_sync_control_frames_without_control_extension() -> None:
    recorder = control_app(control=False)
    with TestClient(recorder) as client, client.websocket_connect("/ws") as websocket:
        assert websocket.receive_ping() == b"p1"
        assert websocket.receive_text() == "before"
        assert websocket.receive_text() == "after"
        websocket.send_ping(b"t1")
        assert websocket.receive_pong() == b"heartbeat"
        assert websocket.receive_pong() == b"t1"
        websocket.send_pong(b"t2")
        websocket.send_text("sync")
        assert websocket.receive_text() == "ack"
    # Without "nexios.control" the app saw no control events at all.
    assert [m["type"] for m in recorder.received] == [
        "websocket.connect",
        "websocket.receive",
        "websocket.disconnect",
    ]


async def test_control_payload_limit() -> None:
    async with TestClient(Recorder()) as client, client.websocket_connect("/ws") as websocket:
        with pytest.raises(ValueError, match="at most 125"):
            await websocket.send_ping(b"x" * 126)
        with pytest.raises(TypeError):
            await websocket.send_pong("text")  # type: ignore[arg-type]


async def test_app_control_frame_errors_match_the_server() -> None:
    outcomes: list[BaseException] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        async def attempt(message: Message) -> None:
            try:
                await send(message)
            except Exception as exc:
                outcomes.append(exc)

        if scope["type"] != "websocket":
            raise RuntimeError("WebSocket only")
        await receive()
        await attempt({"type": "websocket.ping", "bytes": b""})  # before accept
        await send({"type": "websocket.accept"})
        await attempt({"type": "websocket.ping", "bytes": b"x" * 126})
        await attempt({"type": "websocket.pong", "bytes": "text"})
        await send({"type": "websocket.pong"})  # no payload: an empty pong
        await send({"type": "websocket.ping", "bytes": b"x" * 125})  # the largest allowed
        await send({"type": "websocket.close"})
        await attempt({"type": "websocket.pong", "bytes": b""})  # after close

    async with TestClient(handler) as client, client.websocket_connect("/ws") as websocket:
        assert await websocket.receive_pong() == b""
        assert await websocket.receive_ping() == b"x" * 125
        with pytest.raises(WebSocketDisconnect):
            await websocket.receive_ping()
    before, too_big, not_bytes, after = outcomes
    assert isinstance(before, RuntimeError)
    assert "before 'websocket.accept'" in str(before)
    assert isinstance(too_big, ValueError)
    assert "126 bytes" in str(too_big)
    assert isinstance(not_bytes, TypeError)
    assert isinstance(after, RuntimeError)
    assert "after sending 'websocket.close'" in str(after)


async def test_app_ping_after_client_closed_raises_client_disconnected() -> None:
    outcomes: list[BaseException] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"
        try:
            await send({"type": "websocket.ping", "bytes": b"late"})
        except OSError as exc:
            outcomes.append(exc)

    async with TestClient(handler) as client, client.websocket_connect("/ws"):
        pass
    assert [type(exc).__name__ for exc in outcomes] == ["ClientDisconnected"]


async def test_websocket_control_message_toggles_forwarding() -> None:
    events: list[Message] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            events.append(message)
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "forward on":
                await send({"type": "websocket.control", "forward": True})
            elif message.get("text") == "forward off":
                await send({"type": "websocket.control", "forward": False})
            if message["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": "ok"})

    async with TestClient(handler) as client, client.websocket_connect("/ws") as websocket:
        await websocket.send_ping(b"unseen")
        await websocket.send_text("forward on")
        assert await websocket.receive_text() == "ok"
        await websocket.send_ping(b"seen")
        await websocket.send_pong(b"seen too")
        await websocket.send_text("forward off")
        assert await websocket.receive_text() == "ok"
        await websocket.send_ping(b"unseen again")
        await websocket.send_text("end")
        assert await websocket.receive_text() == "ok"
        assert [await websocket.receive_pong() for _ in range(3)] == [
            b"unseen",
            b"seen",
            b"unseen again",
        ]
    assert events[:-1] == [
        {"type": "websocket.receive", "text": "forward on"},
        {"type": "websocket.ping", "bytes": b"seen"},
        {"type": "websocket.pong", "bytes": b"seen too"},
        {"type": "websocket.receive", "text": "forward off"},
        {"type": "websocket.receive", "text": "end"},
    ]


async def test_at_most_32_control_events_wait_for_the_app() -> None:
    events: list[Message] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept", "nexios.control": True})
        while True:
            message = await receive()
            events.append(message)
            if message["type"] == "websocket.disconnect":
                return
            if message["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": "ok"})

    async with TestClient(handler) as client, client.websocket_connect("/ws") as websocket:
        for number in range(40):  # the app does not run between these sends
            await websocket.send_ping(str(number).encode())
        await websocket.send_text("done")
        assert await websocket.receive_text() == "ok"
        assert websocket.control_events_dropped == 8
        await websocket.send_ping(b"later")  # the app caught up: forwarded again
        await websocket.send_text("done")
        assert await websocket.receive_text() == "ok"
    pings = [m["bytes"] for m in events if m["type"] == "websocket.ping"]
    assert pings == [str(n).encode() for n in range(32)] + [b"later"]


# -------------------------------------------------------------- type mismatches


async def test_receive_text_on_binary_names_what_arrived() -> None:
    async with TestClient(app) as client, client.websocket_connect("/ws") as websocket:
        await websocket.send_bytes(b"olleh")
        with pytest.raises(TypeError, match=r"binary message of 5 bytes \(b'hello'\)"):
            await websocket.receive_text()
        # The message was not consumed.
        assert await websocket.receive_bytes() == b"hello"
        await websocket.send_text("t")
        with pytest.raises(TypeError, match="text message"):
            await websocket.receive_bytes()


# -------------------------------------------------------------- app exceptions


class Crash(Exception):
    pass


async def crash_on_message(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    message = await receive()
    if message["type"] == "websocket.receive":
        raise Crash(message["text"])


async def crash_before_accept(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    raise Crash("handshake")


async def test_app_exception_reraised_at_receive() -> None:
    async with TestClient(crash_on_message) as client, client.websocket_connect("/ws") as ws:
        await ws.send_text("kaboom")
        with pytest.raises(Crash, match="kaboom"):
            await ws.receive_text()
        # Reported once; afterwards the connection is seen closed with 1011.
        with pytest.raises(WebSocketDisconnect) as info:
            await ws.receive_text()
        assert info.value.code == 1011


async def test_app_exception_reraised_at_exit() -> None:
    async def scenario() -> None:
        async with (
            TestClient(crash_on_message) as client,
            client.websocket_connect("/ws") as websocket,
        ):
            await websocket.send_text("late")

    with pytest.raises(Crash, match="late"):
        await scenario()


def test_sync_app_exception_reraised() -> None:
    with TestClient(crash_on_message) as client, client.websocket_connect("/ws") as ws:
        ws.send_text("sync boom")
        with pytest.raises(Crash, match="sync boom"):
            ws.receive_text()
    with (
        TestClient(crash_before_accept) as client,
        pytest.raises(Crash, match="handshake"),
        client.websocket_connect("/ws"),
    ):
        pass


async def test_app_exception_without_raise_server_exceptions() -> None:
    async with (
        TestClient(crash_on_message, raise_server_exceptions=False) as client,
        client.websocket_connect("/ws") as ws,
    ):
        await ws.send_text("quiet")
        with pytest.raises(WebSocketDisconnect) as info:
            await ws.receive_text()
        assert info.value.code == 1011
    async with TestClient(crash_before_accept, raise_server_exceptions=False) as client:
        with pytest.raises(WebSocketDenied) as denied:
            async with client.websocket_connect("/ws"):
                pass
        assert denied.value.status_code == 500


async def test_app_protocol_misuse_is_an_error() -> None:
    async def sends_before_accept(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.send", "text": "too early"})

    async with TestClient(sends_before_accept) as client:
        with pytest.raises(RuntimeError, match=r"Expected ASGI message 'websocket\.accept'"):
            async with client.websocket_connect("/ws"):
                pass


# ------------------------------------------------------------- leaks and hangs


async def test_exit_cancels_an_app_that_ignores_the_disconnect() -> None:
    cancelled: list[bool] = []

    async def stubborn(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()  # the disconnect
        try:
            await receive()  # never comes
        except BaseException:
            cancelled.append(True)
            raise

    async with TestClient(stubborn, timeout=0.1) as client, client.websocket_connect("/ws"):
        pass
    assert cancelled == [True]


async def test_client_exit_closes_sessions_left_open() -> None:
    recorder = Recorder()
    async with TestClient(recorder) as client:
        session = client.websocket_connect("/ws")
        await session.__aenter__()
    assert recorder.received[-1]["type"] == "websocket.disconnect"


def test_sync_client_exit_closes_sessions_left_open() -> None:
    recorder = Recorder()
    with TestClient(recorder) as client:
        client.websocket_connect("/ws").__enter__()
    assert recorder.received[-1]["type"] == "websocket.disconnect"
