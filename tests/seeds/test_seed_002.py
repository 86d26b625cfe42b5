"""Seed 002: WebSocket (``@app.ws_route``, ``WebsocketRoutes``, ``WSRouter`` with a list
of routes and a prefix, sending, receiving, the three message formats, the lifecycle)."""

import pytest

from nexios import NexiosApp, WebsocketRoutes  # the seed uses WebsocketRoutes unimported
from nexios.testing import TestClient, WebSocketDenied
from nexios.testing import WebSocketDisconnect as ClientDisconnect


def assert_closed_normally(ws):
    with pytest.raises(ClientDisconnect) as closed:
        ws.receive_text()
    assert closed.value.code == 1000


def assert_not_found(client, path):
    with pytest.raises(WebSocketDenied) as denied:
        with client.websocket_connect(path):
            pass
    assert denied.value.status_code == 404


# ---------------------------------------------------------------------------
# Seed 002, "Basic WebSocket Setup"


def test_basic_websocket_setup():
    from nexios import NexiosApp

    app = NexiosApp()

    @app.ws_route("/ws")
    async def ws_handler(ws):
        await ws.accept()
        ...

    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            # Accepted; the handler then returns, and nexios closes normally.
            assert_closed_normally(ws)
        assert_not_found(client, "/elsewhere")


# Seed 002, "Basic WebSocket Setup": ``WebsocketRoutes``. The snippet uses it without an
# import; it is importable from ``nexios`` (imported at the top of this file).
def test_websocket_routes_class():
    from nexios import NexiosApp

    app = NexiosApp()

    async def ws_handler(ws):
        await ws.accept()
        ...

    app.add_ws_route(WebsocketRoutes("/ws", ws_handler))

    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            assert_closed_normally(ws)


# ---------------------------------------------------------------------------
# Seed 002, "Websocket Router": mounted under "/ws", the route "/ws" is "/ws/ws".


def test_websocket_router():
    app = NexiosApp()

    async def ws_handler(ws):
        await ws.accept()
        await ws.send_text(ws.url.path)

    from nexios.routing import WSRouter

    router = WSRouter()
    router.add_ws_route("/ws", ws_handler)
    app.mount_ws_router(router, "/ws")

    with TestClient(app) as client:
        with client.websocket_connect("/ws/ws") as ws:
            assert ws.receive_text() == "/ws/ws"
        assert_not_found(client, "/ws")


# Seed 002, "Websocket Router" tip: a list of ``WebsocketRoutes`` to the constructor
# (again used without an import; imported at the top of this file).
def test_websocket_router_with_a_list_of_routes():
    app = NexiosApp()

    async def ws_handler(ws):
        await ws.accept()
        await ws.send_text("one")

    async def ws_handler2(ws):
        await ws.accept()
        await ws.send_text("two")

    from nexios.routing import WSRouter

    router = WSRouter(
        [
            WebsocketRoutes("/ws", ws_handler),
            WebsocketRoutes("/ws2", ws_handler2),
        ]
    )
    app.mount_ws_router(router)

    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_text() == "one"
        with client.websocket_connect("/ws2") as ws:
            assert ws.receive_text() == "two"


# Seed 002, "Websocket Router" tip: a prefix, which the mount prefix overrides
# ("this will override /ws": it replaces the router's prefix, docs/choices.md).
def test_websocket_router_prefix_overridden_by_mount():
    app = NexiosApp()

    async def ws_handler(ws):
        await ws.accept()
        await ws.send_text("one")

    async def ws_handler2(ws):
        await ws.accept()
        await ws.send_text("two")

    from nexios.routing import WSRouter

    router = WSRouter(prefix="/ws")
    router.add_ws_route("/ws", ws_handler)
    router.add_ws_route("/ws2", ws_handler2)
    app.mount_ws_router(router, "/ws-overide")  # this will override /ws

    with TestClient(app) as client:
        with client.websocket_connect("/ws-overide/ws") as ws:
            assert ws.receive_text() == "one"
        with client.websocket_connect("/ws-overide/ws2") as ws:
            assert ws.receive_text() == "two"
        assert_not_found(client, "/ws/ws")
        assert_not_found(client, "/ws/ws2")
        assert_not_found(client, "/ws-overide/ws/ws")


# Seed 002, "Websocket Router" tip: without a mount prefix, the router's own is used.
def test_websocket_router_own_prefix():
    from nexios.routing import WSRouter

    app = NexiosApp()

    async def ws_handler(ws):
        await ws.accept()
        await ws.send_text("one")

    router = WSRouter(prefix="/ws")
    router.add_ws_route("/ws", ws_handler)
    app.mount_ws_router(router)

    with TestClient(app) as client:
        with client.websocket_connect("/ws/ws") as ws:
            assert ws.receive_text() == "one"


# ---------------------------------------------------------------------------
# Seed 002, "Sending Messages"


def test_sending_messages():
    from nexios.websockets.base import WebSocket  # noqa: F401 - as the seed writes it

    async def ws_handler(ws):
        await ws.accept()
        await ws.send_text("Hello World")
        # await ws.send_json({"message": "Hello World"})
        # await ws.send_bytes(b"Hello World")

    app = NexiosApp()
    app.add_ws_route("/ws", ws_handler)

    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_text() == "Hello World"
            assert_closed_normally(ws)


# Seed 002, "Sending Messages": the two commented-out alternatives.
def test_sending_messages_alternatives():
    async def ws_handler(ws):
        await ws.accept()
        await ws.send_json({"message": "Hello World"})
        await ws.send_bytes(b"Hello World")

    app = NexiosApp()
    app.add_ws_route("/ws", ws_handler)

    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_json() == {"message": "Hello World"}
            assert ws.receive_bytes() == b"Hello World"


# ---------------------------------------------------------------------------
# Seed 002, "Receiving Messages"


def test_receiving_messages(capsys):
    from nexios.websockets.base import WebSocket  # noqa: F401 - as the seed writes it

    async def ws_handler(ws):
        await ws.accept()
        message = await ws.receive_text()
        # message = await ws.receive_json()
        # message = await ws.receive_bytes()
        print(message)

    app = NexiosApp()
    app.add_ws_route("/ws", ws_handler)

    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_text("Hi from the client")
            assert_closed_normally(ws)
    assert capsys.readouterr().out == "Hi from the client\n"


# Seed 002, "Receiving Messages": the commented-out alternatives.
def test_receiving_messages_alternatives(capsys):
    async def ws_handler(ws):
        await ws.accept()
        message = await ws.receive_json()
        print(message)
        message = await ws.receive_bytes()
        print(message)

    app = NexiosApp()
    app.add_ws_route("/ws", ws_handler)

    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_json({"n": 1})
            ws.send_bytes(b"\xff\x00")
            assert_closed_normally(ws)
    assert capsys.readouterr().out == "{'n': 1}\nb'\\xff\\x00'\n"


# ---------------------------------------------------------------------------
# Seed 002, "Nexios supports three primary message formats" (fragments, each in a
# minimal handler).


def test_message_format_text():
    app = NexiosApp()

    @app.ws_route("/text")
    async def text_handler(ws):
        await ws.accept()
        text_data = await ws.receive_text()
        await ws.send_text(f"Received: {text_data}")

    with TestClient(app) as client:
        with client.websocket_connect("/text") as ws:
            ws.send_text("plain words")
            assert ws.receive_text() == "Received: plain words"


def test_message_format_binary():
    app = NexiosApp()

    @app.ws_route("/binary")
    async def binary_handler(ws):
        await ws.accept()
        binary_data = await ws.receive_bytes()
        await ws.send_bytes(binary_data)  # Echo binary data

    with TestClient(app) as client:
        with client.websocket_connect("/binary") as ws:
            ws.send_bytes(bytes(range(256)))
            assert ws.receive_bytes() == bytes(range(256))


def test_message_format_json():
    app = NexiosApp()

    @app.ws_route("/json")
    async def json_handler(ws):
        await ws.accept()
        json_data = await ws.receive_json()
        await ws.send_json({"status": "success", "data": json_data})

    with TestClient(app) as client:
        with client.websocket_connect("/json") as ws:
            ws.send_json({"items": [1, 2], "ok": True})
            assert ws.receive_json() == {"status": "success", "data": {"items": [1, 2], "ok": True}}


# ---------------------------------------------------------------------------
# Seed 002, "Connection Lifecycle": accept, the receive loop, handling the disconnection
# and closing (fragments, put together in one handler).


def test_connection_lifecycle(capsys):
    from nexios.websockets.base import WebSocketDisconnect

    app = NexiosApp()
    received = []

    @app.ws_route("/ws")
    async def lifecycle(ws):
        await ws.accept()
        try:
            while True:
                data = await ws.receive()
                # Process data
                received.append(data)
        except WebSocketDisconnect:
            print("Client disconnected")
        finally:
            await ws.close()

    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_text("one")
            ws.send_bytes(b"two")
            ws.close(1001, "bye")
    # receive() gives the raw ASGI messages, and raises when the client leaves.
    assert received == [
        {"type": "websocket.receive", "text": "one"},
        {"type": "websocket.receive", "bytes": b"two"},
    ]
    assert capsys.readouterr().out == "Client disconnected\n"


# Seed 002, "Close the Connection": the ``finally: await ws.close()`` closes normally
# when the handler leaves the loop for another reason.
def test_connection_lifecycle_close_in_finally():
    from nexios.websockets.base import WebSocketDisconnect

    app = NexiosApp()

    @app.ws_route("/ws")
    async def lifecycle(ws):
        await ws.accept()
        try:
            while True:
                data = await ws.receive()
                # Process data
                if data.get("text") == "stop":
                    break
                await ws.send_text("ok")
        except WebSocketDisconnect:
            print("Client disconnected")
        finally:
            await ws.close()

    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_text("go")
            assert ws.receive_text() == "ok"
            ws.send_text("stop")
            assert_closed_normally(ws)
