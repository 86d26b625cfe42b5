"""WebSocket middleware, events and exception handlers."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from nexios import NexiosApp, WebSocket, WebSocketConsumer, WebsocketRoutes, WSRouter
from nexios.testing import TestClient, WebSocketDenied, WebSocketDisconnect
from nexios.types import Receive, Scope, Send
from nexios.websockets import WebSocketException
from nexios.websockets.middleware import log_connections, token_auth


def recorder(calls: list[str], name: str) -> Any:
    async def middleware(ws: WebSocket, call_next: Any) -> None:
        calls.append(f"{name} in")
        await call_next()
        calls.append(f"{name} out")

    return middleware


def test_middleware_runs_app_then_router_then_route_then_handler() -> None:
    calls: list[str] = []
    app = NexiosApp()
    outer = WSRouter(prefix="/outer")
    inner = WSRouter(prefix="/inner")

    @inner.middleware
    async def inner_mw(ws: WebSocket, next: Any) -> Any:  # seed 003's signature
        calls.append("inner router in")
        result = await next(ws)
        calls.append("inner router out")
        return result

    @inner.ws("/chat", middleware=[recorder(calls, "route")])
    async def chat(ws: WebSocket) -> None:
        calls.append("handler")
        await ws.accept()

    outer.mount_router(inner)
    outer.add_ws_middleware(recorder(calls, "outer router"))
    app.add_ws_middleware(recorder(calls, "app"))
    app.mount_ws_router(outer)
    with TestClient(app) as client, client.websocket_connect("/outer/inner/chat"):
        pass
    assert calls == [
        "app in",
        "outer router in",
        "inner router in",
        "route in",
        "handler",
        "route out",
        "inner router out",
        "outer router out",
        "app out",
    ]


def test_route_middleware_on_the_app_and_on_websocket_routes() -> None:
    calls: list[str] = []

    async def handler(ws: WebSocket) -> None:
        calls.append("handler")
        await ws.accept()

    app = NexiosApp()
    app.ws_route("/a", middleware=[recorder(calls, "a")])(handler)
    app.add_ws_route(WebsocketRoutes("/b", handler, middleware=[recorder(calls, "b")]))
    with TestClient(app) as client:
        with client.websocket_connect("/a"):
            pass
        with client.websocket_connect("/b"):
            pass
    assert calls == ["a in", "handler", "a out", "b in", "handler", "b out"]


def test_middleware_refuses_before_accept_and_the_handler_never_runs() -> None:
    ran: list[str] = []

    async def auth(ws: WebSocket, next: Any) -> Any:
        if not ws.headers.get("Authorization"):
            await ws.close(code=1008, reason="Authentication required")
            return None
        return await next(ws)

    app = NexiosApp()

    @app.ws_route("/chat", middleware=[auth])
    async def chat(ws: WebSocket) -> None:
        ran.append("handler")
        await ws.accept()
        await ws.send_text(ws.state.get("user", "anonymous"))

    with TestClient(app) as client:
        with pytest.raises(WebSocketDenied) as denied, client.websocket_connect("/chat"):
            pass
        assert denied.value.status_code == 403
        assert denied.value.text == "Authentication required"
        assert ran == []
        with client.websocket_connect("/chat", headers={"Authorization": "x"}) as session:
            assert session.receive_text() == "anonymous"


def test_middleware_sets_state_and_id_for_the_handler() -> None:
    async def identify(ws: WebSocket, call_next: Any) -> None:
        ws.state.user = {"name": "ann"}
        ws.id = "user-1"
        await call_next()

    app = NexiosApp()
    app.add_ws_middleware(identify)

    @app.ws_route("/me")
    async def me(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_json({"user": ws.state.user, "id": ws.id})

    with TestClient(app) as client, client.websocket_connect("/me") as session:
        assert session.receive_json() == {"user": {"name": "ann"}, "id": "user-1"}


def test_an_exception_in_middleware_goes_to_the_exception_handlers() -> None:
    handled: list[str] = []

    class Banned(Exception):
        pass

    async def ban(ws: WebSocket, call_next: Any) -> None:
        raise Banned("nope")

    app = NexiosApp()
    app.add_ws_middleware(ban)

    @app.exception_handler(Banned)
    async def on_banned(ws: WebSocket, exc: Exception) -> None:
        handled.append(str(exc))
        await ws.close(code=1008, reason="banned")

    @app.ws_route("/ws")
    async def handler(ws: WebSocket) -> None:
        await ws.accept()

    with TestClient(app) as client:
        with pytest.raises(WebSocketDenied) as denied, client.websocket_connect("/ws"):
            pass
    assert denied.value.status_code == 403
    assert handled == ["nope"]


def test_calling_next_twice_is_an_error() -> None:
    async def twice(ws: WebSocket, call_next: Any) -> None:
        await call_next()
        await call_next()

    app = NexiosApp()
    app.add_ws_middleware(twice)

    @app.ws_route("/ws")
    async def handler(ws: WebSocket) -> None:
        await ws.accept()

    with TestClient(app) as client, client.websocket_connect("/ws") as session:
        with pytest.raises(WebSocketDisconnect) as closed:
            session.receive_text()
    assert closed.value.code == 1011


def test_plain_asgi_middleware_classes_work() -> None:
    class AddHeader:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            scope = {**scope, "headers": [*scope["headers"], (b"x-added", b"yes")]}

            async def shout(message: Any) -> None:
                if message["type"] == "websocket.send" and "text" in message:
                    message = {**message, "text": message["text"].upper()}
                await send(message)

            await self.app(scope, receive, shout)

    app = NexiosApp()

    @app.ws_route("/ws", middleware=[AddHeader])
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(f"header {ws.headers.get('x-added')}")

    with TestClient(app) as client, client.websocket_connect("/ws") as session:
        assert session.receive_text() == "HEADER YES"


# ---------------------------------------------------------------- ready-made middleware


async def verify(token: str) -> dict[str, str] | None:
    return {"id": "u42", "name": "ann"} if token == "secret" else None


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/ws", {}, 403),
        ("/ws?token=wrong", {}, 403),
        ("/ws", {"Authorization": "Bearer wrong"}, 403),
        ("/ws", {"Authorization": "Basic secret"}, 403),
    ],
)
def test_token_auth_refuses(path: str, headers: dict[str, str], status: int) -> None:
    app = NexiosApp()
    app.add_ws_middleware(token_auth(verify))
    app.add_ws_route("/ws", _whoami)
    with TestClient(app) as client:
        with (
            pytest.raises(WebSocketDenied) as denied,
            client.websocket_connect(path, headers=headers),
        ):
            pass
    assert denied.value.status_code == status
    assert denied.value.text in {"Authentication required", "Invalid token"}


@pytest.mark.parametrize(
    ("path", "headers"),
    [("/ws?token=secret", {}), ("/ws", {"Authorization": "Bearer secret"})],
)
def test_token_auth_accepts_and_sets_user_and_id(path: str, headers: dict[str, str]) -> None:
    app = NexiosApp()
    app.add_ws_middleware(token_auth(verify, user_id=lambda user: user["id"]))
    app.add_ws_route("/ws", _whoami)
    with TestClient(app) as client, client.websocket_connect(path, headers=headers) as session:
        assert session.receive_json() == {"name": "ann", "id": "u42"}


async def _whoami(ws: WebSocket) -> None:
    await ws.accept()
    await ws.send_json({"name": ws.state.user["name"], "id": ws.id})


def test_log_connections_reports_duration_and_close_code(caplog: pytest.LogCaptureFixture) -> None:
    app = NexiosApp()
    app.add_ws_middleware(log_connections())

    @app.ws_route("/ws")
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        await ws.receive_text()

    caplog.set_level(logging.INFO, logger="nexios.access")
    with TestClient(app) as client, client.websocket_connect("/ws") as session:
        session.close(4001)
    lines = [r.getMessage() for r in caplog.records if r.name == "nexios.access"]
    assert "WebSocket /ws connecting" in lines[0]
    assert "WebSocket /ws closed with 4001 after" in lines[1]


# ---------------------------------------------------------------- events


def test_events_fire_in_registration_order_app_first() -> None:
    events: list[Any] = []
    app = NexiosApp()
    router = WSRouter(prefix="/r")

    @app.on("connect")
    async def app_connect(ws: WebSocket) -> None:
        events.append("app connect")

    @router.on("connect")
    async def router_connect(ws: WebSocket) -> None:
        events.append("router connect")

    @router.on("message")
    async def on_message(ws: WebSocket, message: Any) -> None:
        events.append(("message", message))

    @router.on("disconnect")
    async def on_disconnect(ws: WebSocket) -> None:
        events.append(("disconnect", ws.close_code))

    @router.ws("/chat")
    async def chat(ws: WebSocket) -> None:
        await ws.accept()
        events.append("accepted")
        while True:
            await ws.send(await ws.receive() | {"type": "websocket.send"})

    app.mount_ws_router(router)
    with TestClient(app) as client:
        with client.websocket_connect("/r/chat") as session:
            session.send_text("hi")
            assert session.receive_text() == "hi"
            session.send_bytes(b"\x01")
            assert session.receive_bytes() == b"\x01"
            session.close(1001)
    assert events == [
        "app connect",
        "router connect",
        "accepted",
        ("message", "hi"),
        ("message", b"\x01"),
        ("disconnect", 1001),
    ]


def test_a_failing_listener_is_logged_and_the_connection_lives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = NexiosApp()

    @app.on("message")
    async def broken(ws: WebSocket, message: Any) -> None:
        raise RuntimeError("listener bug")

    @app.ws_route("/ws")
    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        async for text in ws.iter_text():
            await ws.send_text(text)

    with TestClient(app) as client, client.websocket_connect("/ws") as session:
        session.send_text("still alive")
        assert session.receive_text() == "still alive"
    assert "listener bug" in caplog.text


def test_disconnect_listener_does_not_fire_for_a_refused_handshake() -> None:
    events: list[str] = []
    app = NexiosApp()

    @app.on("disconnect")
    async def gone(ws: WebSocket) -> None:
        events.append("disconnect")

    @app.ws_route("/ws")
    async def refuse(ws: WebSocket) -> None:
        await ws.close(1008)

    with TestClient(app) as client:
        with pytest.raises(WebSocketDenied), client.websocket_connect("/ws"):
            pass
    assert events == []


# ---------------------------------------------------------------- exception handlers


def test_nearest_exception_handler_wins() -> None:
    app = NexiosApp()
    router = WSRouter(prefix="/r")

    @app.exception_handler(ValueError)
    async def app_handler(ws: WebSocket, exc: Exception) -> None:
        await ws.close(4000, "app")

    @router.exception_handler(ValueError)
    async def router_handler(ws: WebSocket, exc: Exception) -> None:
        await ws.close(4001, f"router: {exc}")

    async def fail(ws: WebSocket) -> None:
        await ws.accept()
        raise ValueError("bad value")

    router.add_ws_route("/fail", fail)
    app.add_ws_route("/fail", fail)
    app.mount_ws_router(router)
    with TestClient(app) as client:
        with client.websocket_connect("/r/fail") as session:
            with pytest.raises(WebSocketDisconnect) as closed:
                session.receive_text()
        assert (closed.value.code, closed.value.reason) == (4001, "router: bad value")
        with client.websocket_connect("/fail") as session:
            with pytest.raises(WebSocketDisconnect) as closed:
                session.receive_text()
        assert (closed.value.code, closed.value.reason) == (4000, "app")


def test_handlers_match_subclasses_and_add_exception_handler() -> None:
    app = NexiosApp()

    async def on_lookup(ws: WebSocket, exc: Exception) -> None:
        await ws.close(4004, type(exc).__name__)

    app.add_exception_handler(LookupError, on_lookup)

    @app.ws_route("/ws")
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        raise KeyError("k")

    with TestClient(app) as client, client.websocket_connect("/ws") as session:
        with pytest.raises(WebSocketDisconnect) as closed:
            session.receive_text()
    assert (closed.value.code, closed.value.reason) == (4004, "KeyError")


def test_seed_003_websocket_exception_handler() -> None:
    app = NexiosApp()
    ws_router = WSRouter()

    @ws_router.exception_handler(WebSocketException)
    async def handle_ws_error(ws: WebSocket, exc: WebSocketException) -> None:
        await ws.close(code=1011, reason=str(exc))

    @ws_router.ws("/chat")
    async def chat(ws: WebSocket) -> None:
        await ws.accept()
        raise WebSocketException(4000, "room full")

    app.mount_ws_router(ws_router)
    with TestClient(app) as client, client.websocket_connect("/chat") as session:
        with pytest.raises(WebSocketDisconnect) as closed:
            session.receive_text()
    assert (closed.value.code, closed.value.reason) == (1011, "4000: room full")


def test_a_failing_exception_handler_falls_back_to_1011(caplog: pytest.LogCaptureFixture) -> None:
    app = NexiosApp()

    @app.exception_handler(ValueError)
    async def broken(ws: WebSocket, exc: Exception) -> None:
        raise RuntimeError("handler bug")

    @app.ws_route("/ws")
    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        raise ValueError("x")

    with TestClient(app) as client, client.websocket_connect("/ws") as session:
        with pytest.raises(WebSocketDisconnect) as closed:
            session.receive_text()
    assert closed.value.code == 1011
    assert "handler bug" in caplog.text


# ---------------------------------------------------------------- consumers


def test_consumer_lifecycle_and_its_middleware() -> None:
    calls: list[Any] = []

    async def tag(ws: WebSocket, call_next: Any) -> None:
        ws.state.tag = "from middleware"
        await call_next()

    class Chat(WebSocketConsumer):
        encoding = "json"
        middleware = [tag]

        async def on_connect(self, ws: WebSocket) -> None:
            await ws.accept()
            calls.append(("connect", ws.state.tag))

        async def on_receive(self, ws: WebSocket, data: Any) -> None:
            calls.append(("receive", data))
            await ws.send_json({"echo": data})

        async def on_disconnect(self, ws: WebSocket, close_code: int) -> None:
            calls.append(("disconnect", close_code))

    app = NexiosApp()
    app.add_ws_route(Chat.as_route("/chat"))
    with TestClient(app) as client:
        with client.websocket_connect("/chat") as session:
            session.send_json({"n": 1})
            assert session.receive_json() == {"echo": {"n": 1}}
            session.close(1001)
    assert calls == [("connect", "from middleware"), ("receive", {"n": 1}), ("disconnect", 1001)]


@pytest.mark.parametrize(
    ("encoding", "send", "code"),
    [("json", "text:{bad", 1007), ("text", "bytes:x", 1003), ("bytes", "text:x", 1003)],
)
def test_consumer_closes_on_the_wrong_kind_of_message(encoding: str, send: str, code: int) -> None:
    disconnects: list[int] = []

    class Strict(WebSocketConsumer):
        async def on_disconnect(self, ws: WebSocket, close_code: int) -> None:
            disconnects.append(close_code)

    Strict.encoding = encoding  # type: ignore[assignment]
    app = NexiosApp()
    app.add_ws_route(Strict.as_route("/ws"))
    kind, _, payload = send.partition(":")
    with TestClient(app) as client, client.websocket_connect("/ws") as session:
        if kind == "text":
            session.send_text(payload)
        else:
            session.send_bytes(payload.encode())
        with pytest.raises(WebSocketDisconnect) as closed:
            session.receive_text()
    assert closed.value.code == code
    assert closed.value.reason  # a short reason, never a traceback
    assert disconnects == [code]


def test_consumer_on_disconnect_runs_once_when_on_receive_fails() -> None:
    disconnects: list[int] = []

    class Fragile(WebSocketConsumer):
        async def on_receive(self, ws: WebSocket, data: Any) -> None:
            raise RuntimeError("bug")

        async def on_disconnect(self, ws: WebSocket, close_code: int) -> None:
            disconnects.append(close_code)

    app = NexiosApp()
    app.add_ws_route(Fragile.as_route("/ws"))
    with TestClient(app) as client, client.websocket_connect("/ws") as session:
        session.send_text("x")
        with pytest.raises(WebSocketDisconnect) as closed:
            session.receive_text()
    assert closed.value.code == 1011
    assert disconnects == [1011]
