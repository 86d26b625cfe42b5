"""Seed 001: WebSockets in Nexios (``WSRouter``, headers, cookies, query and path
parameters, sending and receiving, broadcasting, middleware, close codes)."""

import pytest

from nexios import WebSocket, get_application
from nexios.routing import WSRouter
from nexios.testing import TestClient, WebSocketDenied
from nexios.testing import WebSocketDisconnect as ClientDisconnect


def make_app():
    """What the seed's first example sets up, and the later ones assume."""
    app = get_application()
    ws_router = WSRouter()
    app.mount_ws_router(ws_router)
    return app, ws_router


# ---------------------------------------------------------------------------
# Seed 001, introduction. Not self-consistent as written: it mounts ``ws_app``, which it
# never defines. With ``ws_router`` (the router it defines) it runs; the router is
# mounted before its route is added, and that route is served.


def test_introduction_with_ws_router():
    from nexios import WebSocket, get_application
    from nexios.routing import WSRouter

    app = get_application()

    ws_router = WSRouter()
    app.mount_ws_router(ws_router)  # the seed writes ws_app, which it never defines

    @ws_router.ws_route("/ws")
    async def websocket_endpoint(ws: WebSocket):
        await ws.accept()
        while True:
            data = await ws.receive_text()
            await ws.send_text(f"Received: {data}")

    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_text("hello")
            assert ws.receive_text() == "Received: hello"
            ws.send_text("world")
            assert ws.receive_text() == "Received: world"
        # The handler's loop ended with WebSocketDisconnect when the client left; nexios
        # swallows it (no server exception is re-raised here).


# Seed 001, introduction: as written, ``ws_app`` is undefined.
def test_introduction_as_written_names_an_undefined_ws_app():
    app = get_application()
    ws_router = WSRouter()
    with pytest.raises(NameError, match="ws_app"):
        app.mount_ws_router(ws_app)


# ---------------------------------------------------------------------------
# Seed 001, "Handling Connections" (the bullet list, in a minimal handler)


def test_handling_connections():
    app, ws_router = make_app()

    @ws_router.ws_route("/conn")
    async def conn(ws: WebSocket):
        await ws.accept()
        await ws.send_json(
            {
                "client": list(ws.client),
                "host": ws.client.host,
                "has_headers": "headers" in ws.scope,
                "query_string": ws.scope["query_string"].decode(),
                "path_params": ws.scope["path_params"],
            }
        )
        await ws.close(code=4000, reason="done")

    with TestClient(app, client=("198.51.100.4", 5555)) as client:
        with client.websocket_connect("/conn?a=1") as ws:
            assert ws.receive_json() == {
                "client": ["198.51.100.4", 5555],
                "host": "198.51.100.4",
                "has_headers": True,
                "query_string": "a=1",
                "path_params": {},
            }
            with pytest.raises(ClientDisconnect) as closed:
                ws.receive_text()
            assert (closed.value.code, closed.value.reason) == (4000, "done")


# ---------------------------------------------------------------------------
# Seed 001, "Accessing Headers, Cookies, and Parameters" / "Headers"


def test_headers(capsys):
    app, ws_router = make_app()

    @ws_router.ws_route("/headers")
    async def headers_ws(ws: WebSocket):
        await ws.accept()
        headers = {k.decode(): v.decode() for k, v in ws.headers}
        print("Headers:", headers)

    with TestClient(app) as client:
        with client.websocket_connect("/headers", headers={"X-Token": "abc123"}) as ws:
            with pytest.raises(ClientDisconnect) as closed:
                ws.receive_text()
            assert closed.value.code == 1000
    out = capsys.readouterr().out
    assert out.startswith("Headers: {")
    assert "'x-token': 'abc123'" in out
    assert "'upgrade': 'websocket'" in out


# Seed 001, "Cookies"
def test_cookies(capsys):
    app, ws_router = make_app()

    @ws_router.ws_route("/cookies")
    async def cookies_ws(ws: WebSocket):
        await ws.accept()

        cookies = ws.cookies
        print("Cookies:", cookies)

    with TestClient(app) as client:
        with client.websocket_connect("/cookies", headers={"Cookie": "session=s3cr3t; theme=dark"}):
            pass
    assert capsys.readouterr().out == "Cookies: {'session': 's3cr3t', 'theme': 'dark'}\n"


# Seed 001, "Query Parameters": connecting to /ws?token=12345&user=dunamis prints
# "Query Parameters: token=12345&user=dunamis".
def test_query_parameters(capsys):
    app, ws_router = make_app()

    @ws_router.ws_route("/ws")
    async def query_params_ws(ws: WebSocket):
        await ws.accept()
        query_params = ws.query_params
        print("Query Parameters:", query_params)

    with TestClient(app) as client:
        with client.websocket_connect("/ws?token=12345&user=dunamis"):
            pass
    assert capsys.readouterr().out == "Query Parameters: token=12345&user=dunamis\n"


# Seed 001, "Path Parameters". Not self-consistent: the seed says connecting to /ws/42
# prints "Connected to room: 42", but ``room_id = ws.path_params`` is the whole dict.
# As written it prints the dict (docs/choices.md).
def test_path_parameters_as_written(capsys):
    app, ws_router = make_app()

    @ws_router.ws_route("/ws/{room_id}")
    async def websocket_with_params(ws: WebSocket):
        await ws.accept()
        room_id = ws.path_params
        print(f"Connected to room: {room_id}")

    with TestClient(app) as client:
        with client.websocket_connect("/ws/42"):
            pass
    assert capsys.readouterr().out == "Connected to room: {'room_id': '42'}\n"


# Seed 001, "Path Parameters": the printout the seed shows, with the parameter by key.
def test_path_parameters_by_key(capsys):
    app, ws_router = make_app()

    @ws_router.ws_route("/ws/{room_id}")
    async def websocket_with_params(ws: WebSocket):
        await ws.accept()
        room_id = ws.path_params["room_id"]
        print(f"Connected to room: {room_id}")

    with TestClient(app) as client:
        with client.websocket_connect("/ws/42"):
            pass
    assert capsys.readouterr().out == "Connected to room: 42\n"


# Seed 001, "Path Parameters": docs/choices.md's alternative, the parameter asked for
# by name in the handler, "which also converts it".
def test_path_parameters_by_name_are_converted():
    app, ws_router = make_app()

    @ws_router.ws_route("/ws/{room_id}")
    async def room(ws: WebSocket, room_id: int):
        await ws.accept()
        await ws.send_json({"room_id": room_id})

    with TestClient(app) as client:
        with client.websocket_connect("/ws/42") as ws:
            assert ws.receive_json() == {"room_id": 42}


# ---------------------------------------------------------------------------
# Seed 001, "Sending and Receiving Data" / "Receiving Data"


def test_receiving_data(capsys):
    app, ws_router = make_app()

    @ws_router.ws_route("/receive")
    async def receive_example(ws: WebSocket):
        await ws.accept()
        json_data = await ws.receive_json()
        print("Received JSON:", json_data)

    with TestClient(app) as client:
        with client.websocket_connect("/receive") as ws:
            ws.send_json({"action": "join", "room": 7})
            with pytest.raises(ClientDisconnect) as closed:
                ws.receive_text()
            assert closed.value.code == 1000
    assert capsys.readouterr().out == "Received JSON: {'action': 'join', 'room': 7}\n"


# Seed 001, "Sending Data"
def test_sending_data():
    app, ws_router = make_app()

    @ws_router.ws_route("/send")
    async def send_example(ws: WebSocket):
        await ws.accept()
        await ws.send_json({"message": "Hello, Client!"})

    with TestClient(app) as client:
        with client.websocket_connect("/send") as ws:
            assert ws.receive_json() == {"message": "Hello, Client!"}
            with pytest.raises(ClientDisconnect):
                ws.receive_text()


# ---------------------------------------------------------------------------
# Seed 001, "Broadcasting Messages"


def test_broadcasting_messages():
    app, ws_router = make_app()

    connections = set()

    @ws_router.ws_route("/broadcast")
    async def broadcast_ws(ws: WebSocket):
        await ws.accept()
        connections.add(ws)
        try:
            while True:
                data = await ws.receive_text()
                for conn in connections:
                    await conn.send_text(data)
        except:
            connections.remove(ws)

    with TestClient(app) as client:
        with client.websocket_connect("/broadcast") as one:
            with client.websocket_connect("/broadcast") as two:
                with client.websocket_connect("/broadcast") as three:
                    one.send_text("news")
                    assert [one.receive_text(), two.receive_text(), three.receive_text()] == [
                        "news"
                    ] * 3
                assert len(connections) == 2
                two.send_text("more")
                assert [one.receive_text(), two.receive_text()] == ["more", "more"]
        assert connections == set()


# ---------------------------------------------------------------------------
# Seed 001, "WebSocket Middleware" (global and router middleware)


def test_websocket_middleware_global_and_router(capsys):
    app, ws_router = make_app()

    @ws_router.ws_route("/ws")
    async def websocket_endpoint(ws: WebSocket):
        await ws.accept()
        await ws.send_text("hi")

    async def log_requests(ws: WebSocket, call_next):
        print(f"New WebSocket connection from {ws.client}")
        await call_next()

    app.add_ws_middleware(log_requests)  # global middleware
    ws_router.add_ws_middleware(log_requests)  # router  middleware

    with TestClient(app, client=("203.0.113.9", 40000)) as client:
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_text() == "hi"
    line = "New WebSocket connection from Address(host='203.0.113.9', port=40000)"
    # Both the app's and the router's middleware ran, once each.
    assert capsys.readouterr().out.splitlines() == [line, line]


# Seed 001, "WebSocket Middleware": route-specific middleware. The handler is ``...``:
# it never accepts, so after the middleware ran the handshake is refused (HTTP 403).
def test_websocket_middleware_route_specific(capsys):
    app, ws_router = make_app()

    async def log_requests(ws: WebSocket, call_next):
        print(f"New WebSocket connection from {ws.client}")
        await call_next()

    @ws_router.ws_route("/chat", middleware=[log_requests])
    async def ws_handler(ws): ...

    @ws_router.ws_route("/other")
    async def other(ws):
        await ws.accept()

    with TestClient(app) as client:
        with pytest.raises(WebSocketDenied) as denied:
            with client.websocket_connect("/chat"):
                pass
        assert denied.value.status_code == 403
        assert capsys.readouterr().out == (
            "New WebSocket connection from Address(host='testclient', port=50000)\n"
        )
        with client.websocket_connect("/other"):
            pass
    assert capsys.readouterr().out == ""  # not on the other route


# ---------------------------------------------------------------------------
# Seed 001, "Handling Custom Close Codes"


def test_custom_close_codes():
    app, ws_router = make_app()

    @ws_router.ws_route("/custom-close")
    async def custom_close_ws(ws: WebSocket):
        await ws.accept()
        await ws.send_text("Closing connection with custom code")
        await ws.close(code=1001, reason="Service shutting down")

    with TestClient(app) as client:
        with client.websocket_connect("/custom-close") as ws:
            assert ws.receive_text() == "Closing connection with custom code"
            with pytest.raises(ClientDisconnect) as closed:
                ws.receive_text()
            assert (closed.value.code, closed.value.reason) == (1001, "Service shutting down")


# ---------------------------------------------------------------------------
# Seed 001, "Handling WebSocket Exceptions"


def test_handling_websocket_exceptions(capsys):
    app, ws_router = make_app()

    from nexios.websocket import WebSocketDisconnect

    @ws_router.ws_route("/error-handling")
    async def error_handling_ws(ws: WebSocket):
        await ws.accept()
        try:
            while True:
                message = await ws.receive_text()
                await ws.send_text(f"Echo: {message}")
        except WebSocketDisconnect:
            print("Client disconnected")

    with TestClient(app) as client:
        with client.websocket_connect("/error-handling") as ws:
            ws.send_text("ping")
            assert ws.receive_text() == "Echo: ping"
            ws.close(1001, "going away")
    assert capsys.readouterr().out == "Client disconnected\n"
