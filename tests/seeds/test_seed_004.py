"""Seed 004: the WebSocket class reference (connection management, message handling,
properties, advanced patterns, error handling, testing, performance)."""

import asyncio
import inspect
import json
import logging
import re
import time
import types
from asyncio import Queue
from datetime import datetime
from typing import Dict, List, Set  # noqa: UP035 - as the seed writes them

import pytest

from nexios import NexiosApp, WebSocket, WebSocketDisconnect
from nexios.testing import TestClient, WebSocketDenied
from nexios.websockets import WebSocketStateError

_real_asyncio = asyncio
_real_time = time


class InvalidTokenError(Exception):
    """What the seed's token helpers raise (as PyJWT's ``jwt.InvalidTokenError``)."""


class _Patched:
    """A module whose listed attributes are replaced, for one test's handlers."""

    def __init__(self, real, **overrides):
        self._real = real
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self._real, name)


def refused(client, path, **kwargs):
    with pytest.raises(WebSocketDenied) as denied:
        with client.websocket_connect(path, **kwargs):
            pass
    return denied.value


def closed_with(ws):
    """The (code, reason) of the server's close, read by the client."""
    with pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_text()
    return closed.value.code, closed.value.reason


def is_iso_timestamp(text):
    return datetime.fromisoformat(text).year >= 2024


# ---------------------------------------------------------------------------
# Seed 004, "WebSocket Class" / "Class Definition": ``WebSocket(scope, receive, send)``
# on a plain ASGI app.


def test_class_definition():
    assert list(inspect.signature(WebSocket.__init__).parameters) == [
        "self",
        "scope",
        "receive",
        "send",
    ]

    async def raw_app(scope, receive, send):
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        await websocket.send_text(f"raw {websocket.url.path}")
        await websocket.close()

    client = TestClient(raw_app)  # no lifespan: a plain WebSocket-only ASGI app
    with client.websocket_connect("/anywhere") as ws:
        assert ws.receive_text() == "raw /anywhere"
        assert closed_with(ws) == (1000, "")

    with pytest.raises(ValueError, match="websocket"):
        WebSocket({"type": "http"}, None, None)


# ---------------------------------------------------------------------------
# Seed 004, "Connection Management" / "accept()"


def test_accept(capsys):
    app = NexiosApp()

    @app.ws_route("/ws")
    async def websocket_handler(websocket):
        await websocket.accept()

        try:
            while True:
                message = await websocket.receive_text()
                await websocket.send_text(f"Echo: {message}")
        except WebSocketDisconnect:
            print("Client disconnected")

    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_text("Hello")
            assert ws.receive_text() == "Echo: Hello"
    assert capsys.readouterr().out == "Client disconnected\n"


# Seed 004, "accept()": the subprotocol and headers parameters.
def test_accept_with_subprotocol_and_headers(caplog):
    app = NexiosApp()

    @app.ws_route("/ws")
    async def websocket_handler(websocket):
        await websocket.accept(subprotocol="chat", headers={"X-Server": "Nexios"})

    with TestClient(app) as client:
        with client.websocket_connect("/ws", subprotocols=["superchat", "chat"]) as ws:
            assert ws.accepted_subprotocol == "chat"
            assert (b"x-server", b"Nexios") in ws.extra_headers
            assert closed_with(ws) == (1000, "")

        # A client that did not offer "chat": accepting it would fail the client's
        # handshake, so accept() raises and the handshake is refused (500).
        with caplog.at_level(logging.ERROR, logger="nexios.websockets"):
            denied = refused(client, "/ws", subprotocols=["other"])
        assert denied.status_code == 500
        (record,) = [r for r in caplog.records if r.exc_info]
        assert isinstance(record.exc_info[1], WebSocketStateError)
        assert "Pick one from ws.subprotocols" in str(record.exc_info[1])


# Seed 004, "close()"
def test_close():
    app = NexiosApp()

    @app.ws_route("/ws")
    async def websocket_handler(websocket):
        await websocket.accept()

        try:
            message = await websocket.receive_text()
            if message == "quit":
                await websocket.close(code=1000, reason="User requested disconnect")
        except WebSocketDisconnect:
            pass

    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_text("quit")
            assert closed_with(ws) == (1000, "User requested disconnect")
        with client.websocket_connect("/ws") as ws:
            ws.send_text("stay")
            assert closed_with(ws) == (1000, "")  # the handler returned: closed normally


# ---------------------------------------------------------------------------
# Seed 004, "Message Handling" / "receive_text()"


def test_receive_text(capsys):
    app = NexiosApp()

    @app.ws_route("/chat")
    async def chat_handler(websocket):
        await websocket.accept()

        try:
            while True:
                message = await websocket.receive_text()
                print(f"Received: {message}")

                # Echo back to client
                await websocket.send_text(f"Server received: {message}")
        except WebSocketDisconnect:
            print("Client disconnected")

    with TestClient(app) as client:
        with client.websocket_connect("/chat") as ws:
            ws.send_text("héllo")
            assert ws.receive_text() == "Server received: héllo"
    assert capsys.readouterr().out == "Received: héllo\nClient disconnected\n"


# Seed 004, "receive_bytes()"
def test_receive_bytes(capsys):
    app = NexiosApp()

    def process_binary(data):
        return bytes(b ^ 0xFF for b in data)

    @app.ws_route("/binary")
    async def binary_handler(websocket):
        await websocket.accept()

        try:
            while True:
                data = await websocket.receive_bytes()
                print(f"Received {len(data)} bytes")

                # Process binary data
                processed_data = process_binary(data)
                await websocket.send_bytes(processed_data)
        except WebSocketDisconnect:
            print("Client disconnected")

    with TestClient(app) as client:
        with client.websocket_connect("/binary") as ws:
            ws.send_bytes(b"\x00\x0f\xf0")
            assert ws.receive_bytes() == b"\xff\xf0\x0f"
    assert capsys.readouterr().out == "Received 3 bytes\nClient disconnected\n"


# Seed 004, "receive_json()"
def test_receive_json(capsys):
    app = NexiosApp()
    handled = []

    async def handle_message(content):
        handled.append(content)

    @app.ws_route("/api")
    async def api_handler(websocket):
        await websocket.accept()

        try:
            while True:
                data = await websocket.receive_json()

                # Handle different message types
                if data.get("type") == "ping":
                    await websocket.send_json({"type": "pong"})
                elif data.get("type") == "message":
                    await handle_message(data["content"])
        except WebSocketDisconnect:
            print("Client disconnected")
        except json.JSONDecodeError:
            await websocket.send_json({"error": "Invalid JSON"})

    with TestClient(app) as client:
        with client.websocket_connect("/api") as ws:
            ws.send_json({"type": "ping"})
            assert ws.receive_json() == {"type": "pong"}
            ws.send_json({"type": "message", "content": "hello"})
            ws.send_json({"type": "ping"})
            assert ws.receive_json() == {"type": "pong"}
            assert handled == ["hello"]
            ws.send_text("{not json")
            assert ws.receive_json() == {"error": "Invalid JSON"}
            assert closed_with(ws) == (1000, "")
        with client.websocket_connect("/api"):
            pass
    assert capsys.readouterr().out == "Client disconnected\n"


# ---------------------------------------------------------------------------
# Seed 004, "Sending Messages" / "send_text()". The periodic ``asyncio.sleep(30)`` is
# replaced, for this test's handler, by a sleep that waits for the test's tick.


async def test_send_text_periodic_updates(monkeypatch):
    ticks = _real_asyncio.Queue()
    delays = []

    async def fake_sleep(delay):
        delays.append(delay)
        await ticks.get()

    monkeypatch.setitem(globals(), "asyncio", _Patched(_real_asyncio, sleep=fake_sleep))
    app = NexiosApp()

    @app.ws_route("/notifications")
    async def notification_handler(websocket):
        await websocket.accept()

        # Send welcome message
        await websocket.send_text("Welcome to notifications!")

        # Send periodic updates
        while True:
            await asyncio.sleep(30)
            timestamp = datetime.now().isoformat()
            await websocket.send_text(f"Update at {timestamp}")

    async with TestClient(app) as client:
        async with client.websocket_connect("/notifications") as ws:
            assert await ws.receive_text() == "Welcome to notifications!"
            for _ in range(3):
                ticks.put_nowait(None)
                update = await ws.receive_text()
                assert re.fullmatch(r"Update at \d{4}-\d\d-\d\dT[\d:.]+", update)
                assert is_iso_timestamp(update.removeprefix("Update at "))
            # Let the handler wake once more after the client leaves: its send then
            # raises WebSocketDisconnect and it ends.
            ticks.put_nowait(None)
    assert delays == [30, 30, 30, 30]


# Seed 004, "send_bytes()": streams ``large_file.bin`` from the working directory.
def test_send_bytes_file_stream(monkeypatch, tmp_path):
    content = bytes(range(256)) * 80  # 20480 bytes: chunks of 8192, 8192, 4096
    (tmp_path / "large_file.bin").write_bytes(content)
    monkeypatch.chdir(tmp_path)
    app = NexiosApp()

    @app.ws_route("/file-stream")
    async def file_stream_handler(websocket):
        await websocket.accept()

        # Stream file in chunks
        with open("large_file.bin", "rb") as f:
            while True:
                chunk = f.read(8192)  # 8KB chunks
                if not chunk:
                    break
                await websocket.send_bytes(chunk)

        await websocket.close()

    with TestClient(app) as client:
        with client.websocket_connect("/file-stream") as ws:
            chunks = [ws.receive_bytes() for _ in range(3)]
            assert [len(c) for c in chunks] == [8192, 8192, 4096]
            assert b"".join(chunks) == content
            assert closed_with(ws) == (1000, "")


# Seed 004, "send_json()"
def test_send_json():
    app = NexiosApp()

    @app.ws_route("/data")
    async def data_handler(websocket):
        await websocket.accept()

        # Send structured data
        await websocket.send_json(
            {
                "type": "user_data",
                "user": {"id": 123, "name": "John Doe", "status": "online"},
                "timestamp": datetime.now().isoformat(),
            }
        )

    with TestClient(app) as client:
        with client.websocket_connect("/data") as ws:
            data = ws.receive_json()
            assert is_iso_timestamp(data.pop("timestamp"))
            assert data == {
                "type": "user_data",
                "user": {"id": 123, "name": "John Doe", "status": "online"},
            }


# ---------------------------------------------------------------------------
# Seed 004, "WebSocket Properties" / "client: Optional[Address]"


def test_client_property(capsys):
    app = NexiosApp()

    @app.ws_route("/ws")
    async def websocket_handler(websocket):
        await websocket.accept()

        if websocket.client:
            client_ip = websocket.client.host
            client_port = websocket.client.port
            print(f"Connection from {client_ip}:{client_port}")

    with TestClient(app, client=("203.0.113.7", 4321)) as client:
        with client.websocket_connect("/ws") as ws:
            assert closed_with(ws) == (1000, "")
    with TestClient(app, client=None) as client:  # no client address: prints nothing
        with client.websocket_connect("/ws"):
            pass
    assert capsys.readouterr().out == "Connection from 203.0.113.7:4321\n"


# Seed 004, "headers: Headers"
def test_headers_property():
    app = NexiosApp()

    @app.ws_route("/ws")
    async def websocket_handler(websocket):
        # Check authentication header
        auth_header = websocket.headers.get("Authorization")
        if not auth_header:
            await websocket.close(code=1008, reason="Authentication required")
            return

        await websocket.accept()

    with TestClient(app) as client:
        denied = refused(client, "/ws")
        assert (denied.status_code, denied.text) == (403, "Authentication required")
        with client.websocket_connect("/ws", headers={"authorization": "Bearer x"}) as ws:
            assert closed_with(ws) == (1000, "")


# Seed 004, "query_params: QueryParams"
def test_query_params_property():
    app = NexiosApp()
    joined = []

    async def join_room(room_id, user_id, websocket):
        joined.append((room_id, user_id))
        await websocket.send_text(f"{user_id} joined {room_id}")

    @app.ws_route("/ws")
    async def websocket_handler(websocket):
        # Get room ID from query parameters
        room_id = websocket.query_params.get("room")
        user_id = websocket.query_params.get("user")

        if not room_id or not user_id:
            await websocket.close(code=1008, reason="Missing parameters")
            return

        await websocket.accept()
        await join_room(room_id, user_id, websocket)

    with TestClient(app) as client:
        for url in ("/ws", "/ws?room=lobby", "/ws?user=ada"):
            denied = refused(client, url)
            assert (denied.status_code, denied.text) == (403, "Missing parameters")
        with client.websocket_connect("/ws", params={"room": "lobby", "user": "ada"}) as ws:
            assert ws.receive_text() == "ada joined lobby"
    assert joined == [("lobby", "ada")]


# Seed 004, "path_params: Dict[str, Any]"
def test_path_params_property():
    app = NexiosApp()

    async def room_exists(room_id):
        return room_id in {"lobby", "42"}

    @app.ws_route("/chat/{room_id}")
    async def chat_room_handler(websocket):
        room_id = websocket.path_params["room_id"]

        # Validate room exists
        if not await room_exists(room_id):
            await websocket.close(code=1008, reason="Room not found")
            return

        await websocket.accept()

    with TestClient(app) as client:
        denied = refused(client, "/chat/attic")
        assert (denied.status_code, denied.text) == (403, "Room not found")
        for room in ("lobby", "42"):
            with client.websocket_connect(f"/chat/{room}") as ws:
                assert closed_with(ws) == (1000, "")


# Seed 004, "state: State"
def test_state_property(capsys):
    app = NexiosApp()
    processed = []

    async def authenticate_user(websocket):
        return websocket.query_params.get("user", "anonymous")

    async def process_message(message, user_id):
        processed.append((user_id, message))

    @app.ws_route("/ws")
    async def websocket_handler(websocket):
        await websocket.accept()

        # Store connection metadata
        websocket.state.user_id = await authenticate_user(websocket)
        websocket.state.connected_at = datetime.now()
        websocket.state.message_count = 0

        try:
            while True:
                message = await websocket.receive_text()
                websocket.state.message_count += 1
                await process_message(message, websocket.state.user_id)
        except WebSocketDisconnect:
            print(
                f"User {websocket.state.user_id} disconnected after {websocket.state.message_count} messages"  # noqa: E501
            )

    with TestClient(app) as client:
        with client.websocket_connect("/ws?user=ada") as ws:
            ws.send_text("one")
            ws.send_text("two")
        with client.websocket_connect("/ws"):
            pass
    assert processed == [("ada", "one"), ("ada", "two")]
    assert capsys.readouterr().out == (
        "User ada disconnected after 2 messages\nUser anonymous disconnected after 0 messages\n"
    )


# ---------------------------------------------------------------------------
# Seed 004, "Advanced WebSocket Patterns" / "Authentication and Authorization"


def test_authentication_and_authorization(capsys):
    app = NexiosApp()
    messages = []

    async def verify_jwt_token(token):
        if token != "good-token":
            raise InvalidTokenError(token)
        return types.SimpleNamespace(id=7, name="ada")

    async def handle_authenticated_message(message, user):
        messages.append((user.id, message))

    async def authenticate_websocket(websocket):
        """Authenticate WebSocket connection"""
        token = websocket.query_params.get("token")
        if not token:
            # Try header authentication
            auth_header = websocket.headers.get("Authorization", "")
            if auth_header.startswith("Bearer "):
                token = auth_header[7:]

        if not token:
            await websocket.close(code=1008, reason="Authentication required")
            return None

        try:
            user = await verify_jwt_token(token)
            return user
        except InvalidTokenError:
            await websocket.close(code=1008, reason="Invalid token")
            return None

    @app.ws_route("/secure")
    async def secure_websocket(websocket):
        user = await authenticate_websocket(websocket)
        if not user:
            return

        await websocket.accept()
        websocket.state.user = user

        try:
            while True:
                message = await websocket.receive_text()
                # Process authenticated message
                await handle_authenticated_message(message, user)
        except WebSocketDisconnect:
            print(f"User {user.id} disconnected")

    with TestClient(app) as client:
        for kwargs in ({}, {"headers": {"Authorization": "Basic abc"}}):
            denied = refused(client, "/secure", **kwargs)
            assert (denied.status_code, denied.text) == (403, "Authentication required")
        for kwargs in (
            {"params": {"token": "bad"}},
            {"headers": {"Authorization": "Bearer bad"}},
        ):
            denied = refused(client, "/secure", **kwargs)
            assert (denied.status_code, denied.text) == (403, "Invalid token")

        with client.websocket_connect("/secure?token=good-token") as ws:
            ws.send_text("via query")
        with client.websocket_connect(
            "/secure", headers={"Authorization": "Bearer good-token"}
        ) as ws:
            ws.send_text("via header")
    assert messages == [(7, "via query"), (7, "via header")]
    assert capsys.readouterr().out == "User 7 disconnected\nUser 7 disconnected\n"


# Seed 004, "Room-based Chat System" (with ``authenticate_websocket`` from the section
# above; here the token helper returns a dict, as this example reads ``user["name"]``).
def test_room_based_chat_system():
    app = NexiosApp()

    async def verify_jwt_token(token):
        names = {"alice": "Alice", "bob": "Bob", "carol": "Carol", "dave": "Dave"}
        if token not in names:
            raise InvalidTokenError(token)
        return {"name": names[token]}

    async def authenticate_websocket(websocket):
        """Authenticate WebSocket connection"""
        token = websocket.query_params.get("token")
        if not token:
            # Try header authentication
            auth_header = websocket.headers.get("Authorization", "")
            if auth_header.startswith("Bearer "):
                token = auth_header[7:]

        if not token:
            await websocket.close(code=1008, reason="Authentication required")
            return None

        try:
            user = await verify_jwt_token(token)
            return user
        except InvalidTokenError:
            await websocket.close(code=1008, reason="Invalid token")
            return None

    class ChatRoom:
        def __init__(self, room_id: str):
            self.room_id = room_id
            self.connections: Set[WebSocket] = set()  # noqa: UP006
            self.message_history: List[Dict] = []  # noqa: UP006

        async def add_connection(self, websocket: WebSocket, user: dict):
            self.connections.add(websocket)

            # Send message history
            for message in self.message_history[-50:]:  # Last 50 messages
                await websocket.send_json(message)

            # Notify others
            await self.broadcast(
                {
                    "type": "user_joined",
                    "user": user["name"],
                    "timestamp": datetime.now().isoformat(),
                },
                exclude=websocket,
            )

        async def remove_connection(self, websocket: WebSocket, user: dict):
            self.connections.discard(websocket)

            # Notify others
            await self.broadcast(
                {"type": "user_left", "user": user["name"], "timestamp": datetime.now().isoformat()}
            )

        async def broadcast(self, message: dict, exclude: WebSocket = None):
            """Send message to all connections in the room"""
            disconnected = set()

            for connection in self.connections:
                if connection == exclude:
                    continue

                try:
                    await connection.send_json(message)
                except WebSocketDisconnect:
                    disconnected.add(connection)

            # Clean up disconnected connections
            self.connections -= disconnected

        async def add_message(self, message: dict):
            self.message_history.append(message)
            # Keep only last 1000 messages
            if len(self.message_history) > 1000:
                self.message_history = self.message_history[-1000:]

            await self.broadcast(message)

    # Global room manager
    rooms: Dict[str, ChatRoom] = {}  # noqa: UP006

    @app.ws_route("/chat/{room_id}")
    async def chat_room_handler(websocket):
        room_id = websocket.path_params["room_id"]

        # Authenticate user
        user = await authenticate_websocket(websocket)
        if not user:
            return

        await websocket.accept()

        # Get or create room
        if room_id not in rooms:
            rooms[room_id] = ChatRoom(room_id)

        room = rooms[room_id]
        await room.add_connection(websocket, user)

        try:
            while True:
                data = await websocket.receive_json()

                if data.get("type") == "message":
                    message = {
                        "type": "message",
                        "user": user["name"],
                        "content": data["content"],
                        "timestamp": datetime.now().isoformat(),
                    }
                    await room.add_message(message)

        except WebSocketDisconnect:
            await room.remove_connection(websocket, user)

    def received(ws):
        message = ws.receive_json()
        assert is_iso_timestamp(message.pop("timestamp"))
        return message

    hi = {"type": "message", "user": "Alice", "content": "hi bob"}
    hey = {"type": "message", "user": "Bob", "content": "hey"}
    with TestClient(app) as client:
        assert refused(client, "/chat/lobby").text == "Authentication required"
        assert refused(client, "/chat/lobby?token=mallory").text == "Invalid token"

        with client.websocket_connect("/chat/lobby?token=alice") as alice:
            with client.websocket_connect("/chat/lobby?token=bob") as bob:
                assert received(alice) == {"type": "user_joined", "user": "Bob"}
                alice.send_json({"type": "message", "content": "hi bob"})
                assert received(alice) == hi
                assert received(bob) == hi  # Bob was not told that he joined
                bob.send_json({"type": "typing"})  # ignored
                bob.send_json({"type": "message", "content": "hey"})
                assert received(alice) == hey
                assert received(bob) == hey
            assert received(alice) == {"type": "user_left", "user": "Bob"}

            carol_token = {"Authorization": "Bearer carol"}
            with client.websocket_connect("/chat/lobby", headers=carol_token) as carol:
                # The history first, then the others are told.
                assert [received(carol), received(carol)] == [hi, hey]
                assert received(alice) == {"type": "user_joined", "user": "Carol"}

            with client.websocket_connect("/chat/attic?token=dave") as dave:
                dave.send_json({"type": "message", "content": "anyone?"})
                assert received(dave) == {"type": "message", "user": "Dave", "content": "anyone?"}
            assert received(alice) == {"type": "user_left", "user": "Carol"}

    assert sorted(rooms) == ["attic", "lobby"]
    assert rooms["lobby"].connections == set()
    assert len(rooms["lobby"].message_history) == 2


# Seed 004, "Real-time Data Streaming". The data sources are the test's: each stock
# fetch waits for the test's tick, and ``asyncio.sleep`` returns at once (recorded) for
# this test's streamer; the task it creates is recorded so that the test can await it.
async def test_real_time_data_streaming(monkeypatch, capsys):
    app = NexiosApp()
    stock_ticks = _real_asyncio.Queue()
    delays = []
    tasks = []
    weather_calls = []

    async def fake_sleep(delay):
        delays.append(delay)
        await _real_asyncio.sleep(0)

    def create_task(coro):
        task = _real_asyncio.create_task(coro)
        tasks.append(task)
        return task

    monkeypatch.setitem(
        globals(), "asyncio", _Patched(_real_asyncio, sleep=fake_sleep, create_task=create_task)
    )

    async def fetch_stock_prices():
        price = await stock_ticks.get()
        return {"ACME": price}

    async def fetch_weather_data():
        weather_calls.append(None)
        if len(weather_calls) == 2:
            raise ConnectionError("weather down")
        return {"sky": "clear"}

    class DataStreamer:
        def __init__(self):
            self.subscribers: Dict[str, Set[WebSocket]] = {}  # noqa: UP006
            self.data_queue = Queue()
            self.running = False

        async def start(self):
            """Start the data streaming service"""
            self.running = True
            asyncio.create_task(self.process_data())

        async def stop(self):
            """Stop the data streaming service"""
            self.running = False

        async def subscribe(self, websocket: WebSocket, data_type: str):
            """Subscribe a WebSocket to a data stream"""
            if data_type not in self.subscribers:
                self.subscribers[data_type] = set()

            self.subscribers[data_type].add(websocket)

        async def unsubscribe(self, websocket: WebSocket, data_type: str):
            """Unsubscribe a WebSocket from a data stream"""
            if data_type in self.subscribers:
                self.subscribers[data_type].discard(websocket)

        async def publish_data(self, data_type: str, data: dict):
            """Publish data to all subscribers"""
            if data_type not in self.subscribers:
                return

            message = {"type": data_type, "data": data, "timestamp": datetime.now().isoformat()}

            disconnected = set()
            for websocket in self.subscribers[data_type]:
                try:
                    await websocket.send_json(message)
                except WebSocketDisconnect:
                    disconnected.add(websocket)

            # Clean up disconnected WebSockets
            self.subscribers[data_type] -= disconnected

        async def process_data(self):
            """Process data from external sources"""
            while self.running:
                try:
                    # Simulate real-time data
                    stock_data = await fetch_stock_prices()
                    await self.publish_data("stocks", stock_data)

                    weather_data = await fetch_weather_data()
                    await self.publish_data("weather", weather_data)

                    await asyncio.sleep(1)  # Update every second
                except Exception as e:
                    print(f"Error processing data: {e}")
                    await asyncio.sleep(5)

    # Global data streamer
    data_streamer = DataStreamer()

    @app.on_startup
    async def start_data_streamer():
        await data_streamer.start()

    @app.on_shutdown
    async def stop_data_streamer():
        await data_streamer.stop()

    @app.ws_route("/stream/{data_type}")
    async def data_stream_handler(websocket):
        data_type = websocket.path_params["data_type"]

        # Validate data type
        if data_type not in ["stocks", "weather", "news"]:
            await websocket.close(code=1008, reason="Invalid data type")
            return

        await websocket.accept()
        await data_streamer.subscribe(websocket, data_type)

        try:
            # Keep connection alive and handle client messages
            while True:
                message = await websocket.receive_text()

                if message == "ping":
                    await websocket.send_text("pong")
                elif message == "unsubscribe":
                    await data_streamer.unsubscribe(websocket, data_type)
                    await websocket.close()
                    break

        except WebSocketDisconnect:
            await data_streamer.unsubscribe(websocket, data_type)

    async with TestClient(app) as client:
        assert data_streamer.running
        assert len(tasks) == 1

        with pytest.raises(WebSocketDenied) as denied:
            async with client.websocket_connect("/stream/sports"):
                pass
        assert (denied.value.status_code, denied.value.text) == (403, "Invalid data type")

        async with client.websocket_connect("/stream/stocks") as ws:
            await ws.send_text("ping")
            assert await ws.receive_text() == "pong"  # subscribed by now
            for price in (10, 11, 12):
                stock_ticks.put_nowait(price)
                message = await ws.receive_json()
                assert is_iso_timestamp(message.pop("timestamp"))
                assert message == {"type": "stocks", "data": {"ACME": price}}
            # Round 1 slept 1 s; round 2's weather failed (printed), it slept 5 s.
            assert delays[:2] == [1, 5]
            assert capsys.readouterr().out == "Error processing data: weather down\n"

            await ws.send_text("unsubscribe")
            with pytest.raises(WebSocketDisconnect) as closed:
                await ws.receive_text()
            assert closed.value.code == 1000
        assert data_streamer.subscribers == {"stocks": set()}

    # Shut down: the streamer stops after the round in progress.
    assert data_streamer.running is False
    stock_ticks.put_nowait(13)
    await tasks[0]
    assert delays == [1, 5, 1, 1]


# Seed 004, "WebSocket Middleware"
def test_websocket_middleware():
    app = NexiosApp()
    limited_hosts = {"192.0.2.66"}

    async def verify_token(token):
        if token != "t0k3n":
            raise InvalidTokenError(token)
        return {"name": "ada"}

    async def is_rate_limited(client_ip):
        return client_ip in limited_hosts

    async def websocket_auth_middleware(websocket, call_next):
        """WebSocket authentication middleware"""
        token = websocket.query_params.get("token")

        if not token:
            await websocket.close(code=1008, reason="Authentication required")
            return

        try:
            user = await verify_token(token)
            websocket.state.user = user
            await call_next()
        except InvalidTokenError:
            await websocket.close(code=1008, reason="Invalid token")

    async def websocket_rate_limit_middleware(websocket, call_next):
        """WebSocket rate limiting middleware"""
        client_ip = websocket.client.host if websocket.client else "unknown"

        # Check rate limit (implementation depends on your rate limiting strategy)
        if await is_rate_limited(client_ip):
            await websocket.close(code=1008, reason="Rate limit exceeded")
            return

        await call_next()

    # Add WebSocket middleware to the application
    app.add_ws_middleware(websocket_auth_middleware)
    app.add_ws_middleware(websocket_rate_limit_middleware)

    @app.ws_route("/ws")
    async def websocket_handler(websocket):
        await websocket.accept()
        await websocket.send_json({"user": websocket.state.user})

    with TestClient(app) as client:
        denied = refused(client, "/ws")
        assert (denied.status_code, denied.text) == (403, "Authentication required")
        denied = refused(client, "/ws?token=forged")
        assert (denied.status_code, denied.text) == (403, "Invalid token")
        with client.websocket_connect("/ws?token=t0k3n") as ws:
            assert ws.receive_json() == {"user": {"name": "ada"}}
    with TestClient(app, client=("192.0.2.66", 999)) as client:
        denied = refused(client, "/ws?token=t0k3n")
        assert (denied.status_code, denied.text) == (403, "Rate limit exceeded")


# ---------------------------------------------------------------------------
# Seed 004, "Error Handling" / "WebSocket Exceptions"


def test_websocket_exceptions(capsys):
    from nexios.websockets.errors import WebSocketDisconnect

    app = NexiosApp()

    @app.ws_route("/ws")
    async def websocket_handler(websocket):
        try:
            await websocket.accept()

            while True:
                message = await websocket.receive_text()
                await websocket.send_text(f"Echo: {message}")

        except WebSocketDisconnect as e:
            print(f"WebSocket disconnected: {e.code} - {e.reason}")

        except json.JSONDecodeError:
            await websocket.send_json({"error": "Invalid JSON format"})

        except Exception as e:
            print(f"Unexpected error: {e}")
            await websocket.close(code=1011, reason="Internal server error")

    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_text("hi")
            assert ws.receive_text() == "Echo: hi"
            ws.close(4001, "bye")
        assert capsys.readouterr().out == "WebSocket disconnected: 4001 - bye\n"

        with client.websocket_connect("/ws") as ws:
            ws.send_bytes(b"\x01")  # receive_text() on binary: WebSocketUnsupportedData
            assert closed_with(ws) == (1011, "Internal server error")
    assert capsys.readouterr().out == (
        "Unexpected error: 1003: Expected a text message, got a binary one.\n"
    )


# Seed 004, "Connection State Management". ``asyncio.wait_for`` (30 s) and
# ``time.time`` are the test's for this handler: the test says when a wait times out
# and what time it is.
async def test_connection_state_management(monkeypatch):
    app = NexiosApp()
    clock = [1000.0]
    timeouts_to_force = [0]
    waits = []
    processed = []
    cleaned = []

    async def fake_wait_for(awaitable, timeout):
        waits.append(timeout)
        if timeouts_to_force[0]:
            timeouts_to_force[0] -= 1
            awaitable.close()
            raise _real_asyncio.TimeoutError
        return await _real_asyncio.wait_for(awaitable, timeout)

    monkeypatch.setitem(globals(), "asyncio", _Patched(_real_asyncio, wait_for=fake_wait_for))
    monkeypatch.setitem(globals(), "time", _Patched(_real_time, time=lambda: clock[0]))

    async def process_message(message):
        processed.append(message)
        # Then the client goes quiet: the next wait times out, this much later.
        clock[0] = {"hello": 1030.0, "world": 1061.0}[message]
        timeouts_to_force[0] = 1

    async def cleanup_connection(websocket):
        cleaned.append(websocket.url.path)

    @app.ws_route("/ws")
    async def websocket_handler(websocket):
        await websocket.accept()

        try:
            # Set up heartbeat
            last_ping = time.time()

            while True:
                try:
                    # Wait for message with timeout
                    message = await asyncio.wait_for(websocket.receive_text(), timeout=30.0)

                    if message == "ping":
                        await websocket.send_text("pong")
                        last_ping = time.time()
                    else:
                        await process_message(message)

                except asyncio.TimeoutError:  # noqa: UP041
                    # Check if connection is still alive
                    if time.time() - last_ping > 60:  # 60 seconds timeout
                        await websocket.close(code=1000, reason="Timeout")
                        break

                    # Send ping to check connection
                    await websocket.send_text("ping")

        except WebSocketDisconnect:
            print("Client disconnected")

        finally:
            # Cleanup resources
            await cleanup_connection(websocket)

    async with TestClient(app) as client:
        async with client.websocket_connect("/ws") as ws:
            await ws.send_text("ping")
            assert await ws.receive_text() == "pong"  # last_ping = 1000

            await ws.send_text("hello")
            assert await ws.receive_text() == "ping"  # 30 s idle: still alive
            assert processed == ["hello"]

            await ws.send_text("world")
            with pytest.raises(WebSocketDisconnect) as closed:
                await ws.receive_text()  # 61 s since the last ping: closed
            assert (closed.value.code, closed.value.reason) == (1000, "Timeout")
    assert processed == ["hello", "world"]
    assert cleaned == ["/ws"]
    assert set(waits) == {30.0}


# ---------------------------------------------------------------------------
# Seed 004, "Testing WebSockets" / "WebSocket Test Client" (verbatim)


@pytest.mark.asyncio
async def test_websocket_echo():
    app = NexiosApp()

    @app.ws_route("/ws")
    async def websocket_handler(websocket):
        await websocket.accept()
        try:
            while True:
                message = await websocket.receive_text()
                await websocket.send_text(f"Echo: {message}")
        except WebSocketDisconnect:
            pass

    async with TestClient(app) as client:
        async with client.websocket_connect("/ws") as websocket:
            await websocket.send_text("Hello")
            response = await websocket.receive_text()
            assert response == "Echo: Hello"


# Seed 004, "Testing WebSockets" / "Testing WebSocket JSON Communication" (verbatim)


@pytest.mark.asyncio
async def test_websocket_json():
    app = NexiosApp()

    @app.ws_route("/api")
    async def api_handler(websocket):
        await websocket.accept()
        try:
            while True:
                data = await websocket.receive_json()
                if data.get("type") == "ping":
                    await websocket.send_json({"type": "pong"})
        except WebSocketDisconnect:
            pass

    async with TestClient(app) as client:
        async with client.websocket_connect("/api") as websocket:
            await websocket.send_json({"type": "ping"})
            response = await websocket.receive_json()
            assert response == {"type": "pong"}


# ---------------------------------------------------------------------------
# Seed 004, "Performance Considerations" / "Connection Pooling". The pool is made as
# written (500), then its capacity lowered to 2 so that the test need not open 500.


async def test_connection_pooling():
    app = NexiosApp()
    processed = []

    async def process_message(message):
        processed.append(message)

    class WebSocketPool:
        def __init__(self, max_connections: int = 1000):
            self.max_connections = max_connections
            self.active_connections: Set[WebSocket] = set()  # noqa: UP006

        async def add_connection(self, websocket: WebSocket) -> bool:
            if len(self.active_connections) >= self.max_connections:
                await websocket.close(code=1008, reason="Server at capacity")
                return False

            self.active_connections.add(websocket)
            return True

        def remove_connection(self, websocket: WebSocket):
            self.active_connections.discard(websocket)

        async def broadcast_to_all(self, message: dict):
            disconnected = set()

            for websocket in self.active_connections:
                try:
                    await websocket.send_json(message)
                except WebSocketDisconnect:
                    disconnected.add(websocket)

            self.active_connections -= disconnected

    # Global connection pool
    ws_pool = WebSocketPool(max_connections=500)

    @app.ws_route("/ws")
    async def websocket_handler(websocket):
        if not await ws_pool.add_connection(websocket):
            return

        await websocket.accept()

        try:
            while True:
                message = await websocket.receive_text()
                await process_message(message)
        except WebSocketDisconnect:
            pass
        finally:
            ws_pool.remove_connection(websocket)

    assert ws_pool.max_connections == 500
    ws_pool.max_connections = 2

    async with TestClient(app) as client:
        async with client.websocket_connect("/ws") as one:
            async with client.websocket_connect("/ws") as two:
                with pytest.raises(WebSocketDenied) as denied:
                    async with client.websocket_connect("/ws"):
                        pass
                assert (denied.value.status_code, denied.value.text) == (403, "Server at capacity")
                assert len(ws_pool.active_connections) == 2

                await ws_pool.broadcast_to_all({"type": "notice", "text": "maintenance at 5"})
                expected = {"type": "notice", "text": "maintenance at 5"}
                assert await one.receive_json() == expected
                assert await two.receive_json() == expected
                await one.send_text("from one")
            # A slot is free again.
            async with client.websocket_connect("/ws") as three:
                await three.send_text("from three")
        assert ws_pool.active_connections == set()
    assert sorted(processed) == ["from one", "from three"]


# Seed 004, "Message Queuing"
async def test_message_queuing():
    app = NexiosApp()

    class MessageQueue:
        def __init__(self, maxsize: int = 1000):
            self.queue = Queue(maxsize=maxsize)

        async def put_message(self, message: dict):
            try:
                await self.queue.put(message)
            except asyncio.QueueFull:
                # Handle queue overflow
                await self.queue.get()  # Remove oldest message
                await self.queue.put(message)

        async def get_message(self):
            return await self.queue.get()

    processors = []

    @app.ws_route("/queued")
    async def queued_websocket_handler(websocket):
        await websocket.accept()

        message_queue = MessageQueue()

        # Start message processor
        async def process_messages():
            while True:
                try:
                    message = await message_queue.get_message()
                    await websocket.send_json(message)
                except WebSocketDisconnect:
                    break

        processor_task = asyncio.create_task(process_messages())
        processors.append(processor_task)

        try:
            while True:
                data = await websocket.receive_json()
                await message_queue.put_message(data)

        except WebSocketDisconnect:
            processor_task.cancel()

    async with TestClient(app) as client:
        async with client.websocket_connect("/queued") as ws:
            for n in range(5):
                await ws.send_json({"n": n})
            assert [await ws.receive_json() for _ in range(5)] == [{"n": n} for n in range(5)]
    (processor,) = processors
    with pytest.raises(asyncio.CancelledError):
        await processor
    assert processor.cancelled()
