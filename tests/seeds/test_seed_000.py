"""Seed 000: the WebSockets guide (``@app.websocket_route``, JSON, broadcasting, errors,
authentication, advanced features). Every self-consistent example runs as written."""

import pytest

from nexios import Nexios, NexiosApp
from nexios.exceptions import ImproperlyConfigured
from nexios.testing import TestClient, WebSocketDenied
from nexios.testing import WebSocketDisconnect as ClientDisconnect

# ---------------------------------------------------------------------------
# Seed 000, "2. Basic WebSocket Endpoint"


def test_basic_websocket_endpoint(capsys):
    from nexios.websockets import WebSocket, WebSocketDisconnect

    app = NexiosApp()
    # ...

    @app.websocket_route("/ws")  # or router.ws_route
    async def websocket_endpoint(websocket: WebSocket):
        # Accept the WebSocket connection
        await websocket.accept()
        try:
            while True:
                # Receive a message from the client
                data = await websocket.receive_text()
                # Send a response back to the client
                await websocket.send_text(f"Message text was: {data}")
        except WebSocketDisconnect:
            # Handle client disconnection
            print("Client disconnected")

    if __name__ == "__main__":
        app.run()

    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_text("hello")
            assert ws.receive_text() == "Message text was: hello"
            ws.send_text("again")
            assert ws.receive_text() == "Message text was: again"
        # Leaving the block disconnects the client and waits for the handler to end.
    assert capsys.readouterr().out == "Client disconnected\n"


# Seed 000, "2. Basic WebSocket Endpoint": the ``app.run()`` of its ``__main__`` block
# serves the app with nexios' server (stubbed here: no socket is opened).
def test_basic_websocket_endpoint_app_run(monkeypatch):
    import nexios.server

    calls = []
    monkeypatch.setattr(nexios.server, "run", lambda *args, **kwargs: calls.append((args, kwargs)))
    app = NexiosApp()
    app.run()
    ((args, kwargs),) = calls
    assert args == (app, "127.0.0.1", 8000)
    assert kwargs["compression"] is False


# ---------------------------------------------------------------------------
# Seed 000, "3. Class-Based WebSocket Controller". The class as written is not
# self-consistent (no base class, no path, ``self.send_text`` is defined nowhere,
# ``WebSocketDisconnect`` is not imported): its imports work, and registering it is
# refused with a message naming the fix.


def test_class_based_controller_imports_and_refusal():
    from nexios.routing import WebsocketRoutes
    from nexios.websocket.consumer import WebSocketEndpoint
    from nexios.websockets import WebSocket

    app = NexiosApp()

    # .....
    class WebSocketController:
        async def on_connect(self, websocket: WebSocket):
            """Accept the WebSocket connection."""
            await websocket.accept()
            print("WebSocket connection accepted.")

        async def on_receive(self, websocket: WebSocket):
            """Handle incoming WebSocket messages."""
            try:
                while True:
                    # Receive a message from the client
                    data = await websocket.receive_text()
                    print(f"Received message: {data}")
                    # Send a response back to the client
                    await self.send_text(f"Echo: {data}")
            except WebSocketDisconnect:
                # Handle client disconnection
                print("Client disconnected.")

    with pytest.raises(ImproperlyConfigured, match=r"as_route\(path\)"):
        app.add_ws_route(WebSocketController())

    assert WebSocketEndpoint.__name__ == "WebSocketConsumer"
    assert WebsocketRoutes("/ws", WebSocketEndpoint).path == "/ws"


# Seed 000, "3. Class-Based WebSocket Controller": the working equivalent, a
# ``WebSocketEndpoint`` with on_connect / on_receive(ws, data) / on_disconnect.
def test_class_based_controller_working_equivalent(capsys):
    from nexios.routing import WebsocketRoutes
    from nexios.websocket.consumer import WebSocketEndpoint
    from nexios.websockets import WebSocket

    app = NexiosApp()

    class WebSocketController(WebSocketEndpoint):
        path = "/ws"
        encoding = "text"

        async def on_connect(self, websocket: WebSocket):
            """Accept the WebSocket connection."""
            await websocket.accept()
            print("WebSocket connection accepted.")

        async def on_receive(self, websocket: WebSocket, data: str):
            """Handle incoming WebSocket messages."""
            print(f"Received message: {data}")
            # Send a response back to the client
            await websocket.send_text(f"Echo: {data}")

        async def on_disconnect(self, websocket: WebSocket, close_code: int):
            # Handle client disconnection
            print(f"Client disconnected ({close_code}).")

    app.add_ws_route(WebSocketController())  # served on its ``path``
    app.add_ws_route(WebsocketRoutes("/ws/routes", WebSocketController))

    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_text("hi")
            assert ws.receive_text() == "Echo: hi"
        with client.websocket_connect("/ws/routes") as ws:
            ws.send_text("there")
            assert ws.receive_text() == "Echo: there"
            ws.close(4001)
    assert capsys.readouterr().out.splitlines() == [
        "WebSocket connection accepted.",
        "Received message: hi",
        "Client disconnected (1000).",
        "WebSocket connection accepted.",
        "Received message: there",
        "Client disconnected (4001).",
    ]


# ---------------------------------------------------------------------------
# Seed 000, "4. Handling JSON Data"


def test_handling_json_data(capsys):
    from nexios.websockets import WebSocket, WebSocketDisconnect

    app = NexiosApp()
    # ...

    @app.websocket_route("/ws/json")
    async def websocket_json_endpoint(websocket: WebSocket):
        await websocket.accept()
        try:
            while True:
                data = await websocket.receive_json()
                await websocket.send_json({"response": "JSON received"})
        except WebSocketDisconnect:
            print("Client disconnected")

    with TestClient(app) as client:
        with client.websocket_connect("/ws/json") as ws:
            ws.send_json({"hello": [1, 2, 3]})
            assert ws.receive_json() == {"response": "JSON received"}
            ws.send_json([1, "two"], mode="binary")
            assert ws.receive_json() == {"response": "JSON received"}
        assert capsys.readouterr().out == "Client disconnected\n"

        # Not JSON: receive_json raises WebSocketInvalidJSON, which the example does not
        # catch, so the connection closes with 1007.
        with client.websocket_connect("/ws/json") as ws:
            ws.send_text("{not json")
            with pytest.raises(ClientDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1007
            assert "not valid JSON" in closed.value.reason
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------
# Seed 000, "Broadcasting Messages"


def test_broadcasting_messages(capsys):
    from nexios.websockets import WebSocket, WebSocketDisconnect

    app = NexiosApp()

    active_connections = []

    @app.websocket_route("/ws/broadcast")
    async def websocket_broadcast_endpoint(websocket: WebSocket):
        await websocket.accept()
        # Add the connection to the list of active connections
        active_connections.append(websocket)
        try:
            while True:
                # Receive a message from the client
                data = await websocket.receive_text()
                # Broadcast the message to all active connections
                for connection in active_connections:
                    await connection.send_text(f"Broadcast: {data}")
        except WebSocketDisconnect:
            # Remove the connection from the list of active connections
            active_connections.remove(websocket)
            print("Client disconnected")

    with TestClient(app) as client:
        with client.websocket_connect("/ws/broadcast") as alice:
            with client.websocket_connect("/ws/broadcast") as bob:
                alice.send_text("hi all")
                assert alice.receive_text() == "Broadcast: hi all"
                assert bob.receive_text() == "Broadcast: hi all"
                bob.send_text("hello")
                assert alice.receive_text() == "Broadcast: hello"
                assert bob.receive_text() == "Broadcast: hello"
            assert len(active_connections) == 1
            assert capsys.readouterr().out == "Client disconnected\n"
            alice.send_text("alone")
            assert alice.receive_text() == "Broadcast: alone"
        assert active_connections == []
    assert capsys.readouterr().out == "Client disconnected\n"


# ---------------------------------------------------------------------------
# Seed 000, "Error Handling" (``Nexios`` is used without an import: imported above)


def test_error_handling(capsys):
    from nexios.websockets import WebSocket, WebSocketDisconnect

    app = Nexios()

    @app.websocket_route("/ws/error")
    async def websocket_error_endpoint(websocket: WebSocket):
        await websocket.accept()
        try:
            while True:
                data = await websocket.receive_text()
                if data == "error":
                    # Simulate an error
                    raise ValueError("Simulated error")
                await websocket.send_text(f"Message: {data}")
        except WebSocketDisconnect:
            print("Client disconnected")
        except Exception as e:
            # Handle other exceptions
            print(f"Error: {e}")
            await websocket.send_text(f"Error: {str(e)}")

    with TestClient(app) as client:
        with client.websocket_connect("/ws/error") as ws:
            ws.send_text("fine")
            assert ws.receive_text() == "Message: fine"
            ws.send_text("error")
            assert ws.receive_text() == "Error: Simulated error"
            # The handler returned after the error: nexios closes normally.
            with pytest.raises(ClientDisconnect) as closed:
                ws.receive_text()
            assert closed.value.code == 1000
        assert capsys.readouterr().out == "Error: Simulated error\n"

        with client.websocket_connect("/ws/error") as ws:
            ws.send_text("bye")
            assert ws.receive_text() == "Message: bye"
    assert capsys.readouterr().out == "Client disconnected\n"


# ---------------------------------------------------------------------------
# Seed 000, "7. Authentication and Authorization" (``Nexios`` imported above)


def test_authentication_and_authorization(capsys):
    from nexios.websockets import WebSocket, WebSocketDisconnect

    app = Nexios()

    @app.websocket_route("/ws/secure")
    async def websocket_secure_endpoint(websocket: WebSocket):
        await websocket.accept()
        # Get the token from the query parameters
        token = websocket.query_params.get("token")
        if token != "secret-token":
            # Close the connection if the token is invalid
            await websocket.close(code=1008, reason="Unauthorized")
            return
        try:
            while True:
                data = await websocket.receive_text()
                await websocket.send_text(f"Secure message: {data}")
        except WebSocketDisconnect:
            print("Client disconnected")

    with TestClient(app) as client:
        with client.websocket_connect("/ws/secure?token=secret-token") as ws:
            ws.send_text("classified")
            assert ws.receive_text() == "Secure message: classified"
        assert capsys.readouterr().out == "Client disconnected\n"

        for url in ("/ws/secure?token=wrong", "/ws/secure"):
            # Accepted first, then closed with 1008.
            with client.websocket_connect(url) as ws:
                with pytest.raises(ClientDisconnect) as closed:
                    ws.receive_text()
                assert (closed.value.code, closed.value.reason) == (1008, "Unauthorized")
                assert ws.close_code == 1008
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------
# Seed 000, "9. Advanced Features": binary data, ping/pong, custom headers (bullets,
# embedded in a minimal handler).


def test_advanced_features():
    from nexios.websockets import WebSocket, WebSocketDisconnect

    app = NexiosApp()

    @app.websocket_route("/ws/advanced")
    async def advanced(websocket: WebSocket):
        # Custom Headers: read during the handshake, before accepting.
        if websocket.headers.get("X-Client") != "tests":
            await websocket.close(code=1008, reason="Unknown client")
            return
        await websocket.accept()
        # Binary Data
        data = await websocket.receive_bytes()
        await websocket.send_bytes(data[::-1])
        # Ping/Pong
        await websocket.send_ping(b"are you there?")
        answer = await websocket.receive_pong()
        await websocket.send_pong(b"heartbeat")
        await websocket.send_text(f"pong was {answer!r}")
        try:
            await websocket.receive_text()
        except WebSocketDisconnect:
            pass

    with TestClient(app) as client:
        with pytest.raises(WebSocketDenied) as denied:
            with client.websocket_connect("/ws/advanced"):
                pass
        assert denied.value.status_code == 403
        assert denied.value.text == "Unknown client"

        with client.websocket_connect("/ws/advanced", headers={"X-Client": "tests"}) as ws:
            ws.send_bytes(b"\x00\x01\x02")
            assert ws.receive_bytes() == b"\x02\x01\x00"
            assert ws.receive_ping() == b"are you there?"
            assert ws.receive_pong() == b"heartbeat"
            assert ws.receive_text() == "pong was b'are you there?'"
