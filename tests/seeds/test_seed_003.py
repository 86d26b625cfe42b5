"""Seed 003: the WebSocket API reference (``WSRouter.ws``, state, sending and receiving
with ping/pong, events, middleware, groups, broadcasting, error handling,
authentication, rate limiting, compression)."""

import logging

import pytest

from nexios import NexiosApp, WebSocketException, WebSocketState, WSRouter
from nexios.testing import TestClient, WebSocketDenied
from nexios.testing import WebSocketDisconnect as ClientDisconnect
from nexios.websockets import WebSocketStateError


def mounted(*routers):
    app = NexiosApp()
    for router in routers:
        app.mount_ws_router(router)
    return app


def refused(client, path, **kwargs):
    with pytest.raises(WebSocketDenied) as denied:
        with client.websocket_connect(path, **kwargs):
            pass
    return denied.value


# ---------------------------------------------------------------------------
# Seed 003, "Basic WebSocket Setup"


def test_basic_websocket_setup():
    from nexios import WSRouter

    ws_router = WSRouter()

    # Basic WebSocket route
    @ws_router.ws("/ws")
    async def websocket_endpoint(ws):
        await ws.accept()
        await ws.send_text("Connected!")

        while True:
            data = await ws.receive_text()
            await ws.send_text(f"Echo: {data}")

    app = mounted(ws_router)
    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_text() == "Connected!"
            ws.send_text("one")
            assert ws.receive_text() == "Echo: one"
            ws.send_text("two")
            assert ws.receive_text() == "Echo: two"


# ---------------------------------------------------------------------------
# Seed 003, "WebSocket Connection" (fragments in one handler; ``WebSocketState`` is
# imported at the top). ``ws.state == WebSocketState.CONNECTED`` compares the
# connection state (docs/choices.md).


def test_websocket_connection():
    ws_router = WSRouter()
    seen = []

    @ws_router.ws("/ws")
    async def handler(ws):
        # Accept connection
        await ws.accept()

        # Check connection state
        if ws.state == WebSocketState.CONNECTED:
            # Connection is active
            seen.append("active")

        await ws.send_text("closing")
        # Close connection
        await ws.close(code=1000, reason="Normal closure")

        # Check connection state
        if ws.state == WebSocketState.CONNECTED:
            # Connection is active
            seen.append("still active")
        seen.append(ws.state == WebSocketState.DISCONNECTED)

    with TestClient(mounted(ws_router)) as client:
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_text() == "closing"
            with pytest.raises(ClientDisconnect) as closed:
                ws.receive_text()
            assert (closed.value.code, closed.value.reason) == (1000, "Normal closure")
    assert seen == ["active", True]


# ---------------------------------------------------------------------------
# Seed 003, "Sending Messages"


def test_sending_messages():
    ws_router = WSRouter()

    @ws_router.ws("/send")
    async def handler(ws):
        await ws.accept()
        # Send text message
        await ws.send_text("Hello, World!")

        # Send binary message
        await ws.send_bytes(b"Hello, World!")

        # Send JSON message
        await ws.send_json({"message": "Hello", "type": "greeting"})

        # Send ping
        await ws.send_ping()

        # Send pong
        await ws.send_pong()

    with TestClient(mounted(ws_router)) as client:
        with client.websocket_connect("/send") as ws:
            assert ws.receive_text() == "Hello, World!"
            assert ws.receive_bytes() == b"Hello, World!"
            assert ws.receive_json() == {"message": "Hello", "type": "greeting"}
            assert ws.receive_ping() == b""
            assert ws.receive_pong() == b""


# ---------------------------------------------------------------------------
# Seed 003, "Receiving Messages". The app sees the client's ping and pong once it asks
# for them (its first receive_ping), so it says "ready" before that and the client
# pings after reading it.


def test_receiving_messages():
    ws_router = WSRouter()

    @ws_router.ws("/receive")
    async def handler(ws):
        await ws.accept()
        # Receive text message
        text = await ws.receive_text()

        # Receive binary message
        binary = await ws.receive_bytes()

        # Receive JSON message
        data = await ws.receive_json()

        await ws.send_text("ready")

        # Receive ping
        ping = await ws.receive_ping()

        # Receive pong
        pong = await ws.receive_pong()

        await ws.send_json(
            {
                "text": text,
                "binary": binary.hex(),
                "data": data,
                "ping": ping.decode(),
                "pong": pong.decode(),
            }
        )

    with TestClient(mounted(ws_router)) as client:
        with client.websocket_connect("/receive") as ws:
            ws.send_text("some text")
            ws.send_bytes(b"\x01\x02")
            ws.send_json({"k": "v"})
            assert ws.receive_text() == "ready"
            ws.send_ping(b"ping-payload")
            assert ws.receive_pong() == b"ping-payload"  # the server's automatic answer
            ws.send_pong(b"pong-payload")
            assert ws.receive_json() == {
                "text": "some text",
                "binary": "0102",
                "data": {"k": "v"},
                "ping": "ping-payload",
                "pong": "pong-payload",
            }


# ---------------------------------------------------------------------------
# Seed 003, "WebSocket Events"


def test_websocket_events(capsys):
    ws_router = WSRouter()

    @ws_router.ws("/events")
    async def echo(ws):
        await ws.accept()
        async for text in ws.iter_text():
            await ws.send_text(text.upper())

    # Connection events
    @ws_router.on("connect")
    async def on_connect(ws):
        print(f"Client connected: {ws.client}")

    @ws_router.on("disconnect")
    async def on_disconnect(ws):
        print(f"Client disconnected: {ws.client}")

    # Message events
    @ws_router.on("message")
    async def on_message(ws, message):
        print(f"Received message: {message}")

    with TestClient(mounted(ws_router), client=("192.0.2.1", 1234)) as client:
        with client.websocket_connect("/events") as ws:
            ws.send_text("hello")
            assert ws.receive_text() == "HELLO"
            ws.send_bytes(b"raw")
            with pytest.raises(ClientDisconnect) as closed:
                ws.receive_text()  # the echo handler takes text only: 1003
            assert closed.value.code == 1003
    assert capsys.readouterr().out.splitlines() == [
        "Client connected: Address(host='192.0.2.1', port=1234)",
        "Received message: hello",
        "Received message: b'raw'",
        "Client disconnected: Address(host='192.0.2.1', port=1234)",
    ]


# ---------------------------------------------------------------------------
# Seed 003, "WebSocket Middleware" (router middleware, and the same function as route
# middleware). Refusing before accept is an HTTP 403 with the reason as the body.


def test_websocket_middleware():
    ws_router = WSRouter()
    calls = []

    # WebSocket middleware
    @ws_router.middleware
    async def auth_middleware(ws, next):
        calls.append(ws.url.path)
        if not ws.headers.get("Authorization"):
            await ws.close(code=1008, reason="Authentication required")
            return
        return await next(ws)

    # Route-specific middleware
    @ws_router.ws("/chat", middleware=[auth_middleware])
    async def chat(ws):
        await ws.accept()
        # Chat logic...
        await ws.send_text(f"hello {ws.headers['Authorization']}")

    with TestClient(mounted(ws_router)) as client:
        denied = refused(client, "/chat")
        assert denied.status_code == 403
        assert denied.text == "Authentication required"
        assert calls == ["/chat"]

        with client.websocket_connect("/chat", headers={"Authorization": "Bearer t"}) as ws:
            assert ws.receive_text() == "hello Bearer t"
        # Router middleware and route middleware: the function ran twice.
        assert calls == ["/chat", "/chat", "/chat"]


# ---------------------------------------------------------------------------
# Seed 003, "WebSocket Groups"


def test_websocket_groups():
    app = NexiosApp()

    # Create WebSocket group
    chat_group = WSRouter(prefix="/chat")

    # Add routes to group
    @chat_group.ws("/general")
    async def general_chat(ws):
        await ws.accept()
        # General chat logic...
        await ws.send_text("general")

    @chat_group.ws("/private")
    async def private_chat(ws):
        await ws.accept()
        # Private chat logic...
        await ws.send_text("private")

    # Mount group to main app
    app.mount_ws_router(chat_group)

    with TestClient(app) as client:
        with client.websocket_connect("/chat/general") as ws:
            assert ws.receive_text() == "general"
        with client.websocket_connect("/chat/private") as ws:
            assert ws.receive_text() == "private"
        assert refused(client, "/general").status_code == 404
        assert refused(client, "/chat-general").status_code == 404


# ---------------------------------------------------------------------------
# Seed 003, "WebSocket Broadcasting": ``WSRouter.broadcast`` / ``broadcast_to``.


async def test_websocket_broadcasting():
    ws_router = WSRouter()
    chat_group = WSRouter(prefix="/chat")

    async def listener(ws):
        ws.id = ws.query_params["id"]
        await ws.accept()
        async for text in ws.iter_text():
            await ws.send_text(f"echo: {text}")

    ws_router.add_ws_route("/ws", listener)
    chat_group.add_ws_route("/general", listener)
    app = mounted(ws_router, chat_group)

    async with TestClient(app) as client:
        async with (
            client.websocket_connect("/ws?id=client1") as one,
            client.websocket_connect("/chat/general?id=client2") as two,
            client.websocket_connect("/ws?id=client3") as three,
        ):
            # Broadcast to all connected clients
            await ws_router.broadcast("Hello, everyone!")

            # Broadcast to specific group
            await chat_group.broadcast("Hello, chat!")

            # Broadcast to specific clients
            await ws_router.broadcast_to(["client1", "client2"], "Hello, specific clients!")

            assert await one.receive_text() == "Hello, everyone!"
            assert await three.receive_text() == "Hello, everyone!"
            assert await two.receive_text() == "Hello, chat!"
            assert await one.receive_text() == "Hello, specific clients!"
            assert await two.receive_text() == "Hello, specific clients!"
            # client3 got nothing more: its next message is the echo.
            await three.send_text("x")
            assert await three.receive_text() == "echo: x"


# ---------------------------------------------------------------------------
# Seed 003, "WebSocket State Management"


def test_websocket_state_management():
    ws_router = WSRouter()

    @ws_router.ws("/state")
    async def handler(ws):
        await ws.accept()
        # Store client state
        ws.state["user_id"] = 42
        ws.state["room"] = "general"

        # Access client state
        user_id = ws.state.get("user_id")
        room = ws.state.get("room")

        await ws.send_json(
            {
                "user_id": user_id,
                "room": room,
                "attr": ws.state.user_id,
                "missing": ws.state.get("x"),
            }
        )

    with TestClient(mounted(ws_router)) as client:
        with client.websocket_connect("/state") as ws:
            assert ws.receive_json() == {
                "user_id": 42,
                "room": "general",
                "attr": 42,
                "missing": None,
            }


# ---------------------------------------------------------------------------
# Seed 003, "WebSocket Error Handling" (``WebSocketException`` imported at the top)


def test_websocket_error_handling_exception_handler():
    ws_router = WSRouter()

    # Handle WebSocket errors
    @ws_router.exception_handler(WebSocketException)
    async def handle_ws_error(ws, exc):
        await ws.close(code=1011, reason=str(exc))

    @ws_router.ws("/text-only")
    async def text_only(ws):
        await ws.accept()
        while True:
            await ws.send_text(await ws.receive_text())

    @ws_router.ws("/raise")
    async def raises(ws):
        await ws.accept()
        raise WebSocketException(4002, "quota exhausted")

    with TestClient(mounted(ws_router)) as client:
        with client.websocket_connect("/text-only") as ws:
            ws.send_text("fine")
            assert ws.receive_text() == "fine"
            ws.send_bytes(b"\x00")  # receive_text raises WebSocketUnsupportedData
            with pytest.raises(ClientDisconnect) as closed:
                ws.receive_text()
            assert closed.value.code == 1011
            assert closed.value.reason == "1003: Expected a text message, got a binary one."
        with client.websocket_connect("/raise") as ws:
            with pytest.raises(ClientDisconnect) as closed:
                ws.receive_text()
            assert (closed.value.code, closed.value.reason) == (1011, "4002: quota exhausted")


# Seed 003, "WebSocket Error Handling": custom error handling in the route.
def test_websocket_error_handling_in_route():
    ws_router = WSRouter()

    # Custom error handling
    @ws_router.ws("/chat")
    async def chat(ws):
        try:
            await ws.accept()
            # Chat logic...
            text = await ws.receive_text()
            raise ValueError(f"cannot handle {text!r}")
        except Exception as e:
            await ws.close(code=1011, reason=str(e))

    with TestClient(mounted(ws_router)) as client:
        with client.websocket_connect("/chat") as ws:
            ws.send_text("boom")
            with pytest.raises(ClientDisconnect) as closed:
                ws.receive_text()
            assert (closed.value.code, closed.value.reason) == (1011, "cannot handle 'boom'")


# ---------------------------------------------------------------------------
# Seed 003, "Advanced Features" / "WebSocket Authentication"


def test_websocket_authentication():
    ws_router = WSRouter()

    async def validate_token(token):
        return token == "Bearer valid"

    # WebSocket authentication
    @ws_router.ws("/secure")
    async def secure_endpoint(ws):
        token = ws.headers.get("Authorization")
        if not await validate_token(token):
            await ws.close(code=1008, reason="Invalid token")
            return

        await ws.accept()
        # Secure WebSocket logic...
        await ws.send_text("welcome")

    with TestClient(mounted(ws_router)) as client:
        for headers in ({}, {"Authorization": "Bearer nope"}):
            denied = refused(client, "/secure", headers=headers)
            assert (denied.status_code, denied.text) == (403, "Invalid token")
        with client.websocket_connect("/secure", headers={"Authorization": "Bearer valid"}) as ws:
            assert ws.receive_text() == "welcome"


# ---------------------------------------------------------------------------
# Seed 003, "WebSocket Rate Limiting"


def test_websocket_rate_limiting():
    ws_router = WSRouter()
    seen = {}

    async def check_rate_limit(client):
        """At most two connections per client host."""
        seen[client.host] = seen.get(client.host, 0) + 1
        return seen[client.host] <= 2

    # WebSocket rate limiting
    @ws_router.middleware
    async def rate_limit(ws, next):
        if not await check_rate_limit(ws.client):
            await ws.close(code=1008, reason="Rate limit exceeded")
            return
        return await next(ws)

    @ws_router.ws("/ws")
    async def endpoint(ws):
        await ws.accept()
        await ws.send_text("ok")

    app = mounted(ws_router)
    with TestClient(app, client=("198.51.100.1", 1000)) as client:
        for _ in range(2):
            with client.websocket_connect("/ws") as ws:
                assert ws.receive_text() == "ok"
        denied = refused(client, "/ws")
        assert (denied.status_code, denied.text) == (403, "Rate limit exceeded")
    with TestClient(app, client=("198.51.100.2", 1000)) as other:
        with other.websocket_connect("/ws") as ws:
            assert ws.receive_text() == "ok"


# ---------------------------------------------------------------------------
# Seed 003, "WebSocket Compression". As written, ``enable_compression()`` is called
# after ``accept()``; compression is negotiated in the handshake, so that call raises
# WebSocketStateError naming the fix (docs/choices.md). The connection then closes
# with 1011.


def test_websocket_compression_as_written_raises(caplog):
    ws_router = WSRouter()

    # Enable WebSocket compression
    @ws_router.ws("/compressed")
    async def compressed_endpoint(ws):
        await ws.accept()
        ws.enable_compression()
        # Compressed WebSocket logic...

    with caplog.at_level(logging.ERROR, logger="nexios.websockets"):
        with TestClient(mounted(ws_router)) as client:
            with client.websocket_connect("/compressed", compression=True) as ws:
                with pytest.raises(ClientDisconnect) as closed:
                    ws.receive_text()
                assert (closed.value.code, closed.value.reason) == (1011, "Internal error")
                assert ws.compression is False
    (record,) = [r for r in caplog.records if r.exc_info]
    error = record.exc_info[1]
    assert isinstance(error, WebSocketStateError)
    assert "call ws.enable_compression() before ws.accept()" in str(error)


# Seed 003, "WebSocket Compression": the honest version, before ``accept()``.
def test_websocket_compression_before_accept():
    ws_router = WSRouter()

    # Enable WebSocket compression
    @ws_router.ws("/compressed")
    async def compressed_endpoint(ws):
        offered = ws.enable_compression()
        await ws.accept()
        # Compressed WebSocket logic...
        await ws.send_json({"offered": offered, "on": ws.compression})
        # Asked again after accept: it is on (True), so no error.
        if offered:
            assert ws.enable_compression() is True
        await ws.send_text("x" * 1000)

    with TestClient(mounted(ws_router)) as client:
        with client.websocket_connect("/compressed", compression=True) as ws:
            assert ws.compression is True
            assert ws.receive_json() == {"offered": True, "on": True}
            assert ws.receive_text() == "x" * 1000
        with client.websocket_connect("/compressed") as ws:
            assert ws.compression is False
            assert ws.receive_json() == {"offered": False, "on": False}
            assert ws.receive_text() == "x" * 1000
