"""WebSocket routing: every registration form, prefixes, parameters, refusals, names."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from nexios import NexiosApp, WebSocket, WebSocketConsumer, WebsocketRoutes, WSRouter
from nexios.exceptions import ImproperlyConfigured, NoMatchFound
from nexios.routing import WebsocketRoutes as RoutingWebsocketRoutes
from nexios.routing import WSRouter as RoutingWSRouter
from nexios.testing import TestClient, WebSocketDenied


async def say_path(ws: WebSocket) -> None:
    await ws.accept()
    await ws.send_json({"path": ws.scope["path"], "params": _plain(ws.path_params)})


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    return {k: [type(v).__name__, str(v)] for k, v in params.items()}


def reply(client: TestClient, path: str) -> Any:
    with client.websocket_connect(path) as session:
        return session.receive_json()


def refused(client: TestClient, path: str) -> int:
    with pytest.raises(WebSocketDenied) as denied, client.websocket_connect(path):
        pass
    return denied.value.status_code


def test_same_classes_from_nexios_and_nexios_routing() -> None:
    assert RoutingWSRouter is WSRouter
    assert RoutingWebsocketRoutes is WebsocketRoutes


def test_every_registration_form_on_the_app() -> None:
    app = NexiosApp()
    app.ws_route("/a")(say_path)
    app.websocket_route("/b")(say_path)
    app.add_ws_route(WebsocketRoutes("/c", say_path))
    app.add_ws_route("/d", say_path)
    with TestClient(app) as client:
        for path in "abcd":
            assert reply(client, f"/{path}")["path"] == f"/{path}"


def test_every_registration_form_on_a_router() -> None:
    router = WSRouter(prefix="/r", routes=[WebsocketRoutes("/a", say_path)])
    router.ws_route("/b")(say_path)
    router.ws("/c")(say_path)
    router.add_ws_route("/d", say_path)
    router.add_ws_route(WebsocketRoutes("/e", say_path))
    listed = WSRouter([WebsocketRoutes("/f", say_path), WebsocketRoutes("/g", say_path)])
    app = NexiosApp()
    app.mount_ws_router(router)
    app.mount_ws_router(listed)
    with TestClient(app) as client:
        for path in ["/r/a", "/r/b", "/r/c", "/r/d", "/r/e", "/f", "/g"]:
            assert reply(client, path)["path"] == path


def test_routes_added_after_mounting_are_served() -> None:
    app = NexiosApp()
    router = WSRouter()
    app.mount_ws_router(router)
    router.ws_route("/late")(say_path)
    with TestClient(app) as client:
        assert reply(client, "/late")["path"] == "/late"


def test_mount_prefix_replaces_the_routers_own() -> None:
    router = WSRouter(prefix="/ws")
    router.add_ws_route("/ws", say_path)
    app = NexiosApp()
    app.mount_ws_router(router, "/ws-override")
    with TestClient(app) as client:
        assert reply(client, "/ws-override/ws")["path"] == "/ws-override/ws"
        assert refused(client, "/ws/ws") == 404


def test_prefix_matches_whole_segments_only() -> None:
    chat = WSRouter(prefix="/chat")
    chat.add_ws_route("/", say_path)
    chat.add_ws_route("/{room}", say_path)
    app = NexiosApp()
    app.mount_ws_router(chat)
    with TestClient(app) as client:
        assert reply(client, "/chat/lobby")["params"] == {"room": ["str", "lobby"]}
        assert reply(client, "/chat")["path"] == "/chat"
        assert reply(client, "/chat/")["path"] == "/chat/"
        assert refused(client, "/chat-lobby") == 404


def test_routers_nest_and_prefixes_can_hold_parameters() -> None:
    inner = WSRouter(prefix="/files")
    inner.add_ws_route("/{name}", say_path)
    middle = WSRouter(prefix="/rooms/{room:int}")
    middle.mount_router(inner)
    outer = WSRouter(prefix="/api")
    outer.mount_router(middle)
    app = NexiosApp()
    app.mount_ws_router(outer)
    with TestClient(app) as client:
        assert reply(client, "/api/rooms/7/files/a.txt")["params"] == {
            "room": ["int", "7"],
            "name": ["str", "a.txt"],
        }
        assert refused(client, "/api/rooms/x/files/a.txt") == 404


def test_convertors_give_converted_values() -> None:
    app = NexiosApp()
    app.add_ws_route("/i/{id:int}", say_path)
    app.add_ws_route("/f/{f:float}", say_path)
    app.add_ws_route("/u/{u:uuid}", say_path)
    app.add_ws_route("/p/{rest:path}", say_path)
    token = uuid.uuid4()
    with TestClient(app) as client:
        assert reply(client, "/i/42")["params"] == {"id": ["int", "42"]}
        assert reply(client, "/f/2.5")["params"] == {"f": ["float", "2.5"]}
        assert reply(client, f"/u/{token}")["params"] == {"u": ["UUID", str(token)]}
        assert reply(client, "/p/a/b/c")["params"] == {"rest": ["str", "a/b/c"]}
        assert refused(client, "/i/forty-two") == 404


def test_handlers_get_path_parameters_by_name() -> None:
    app = NexiosApp()

    @app.ws_route("/rooms/{room_id:int}/users/{user}")
    async def room(ws: WebSocket, room_id: int) -> None:
        await ws.accept()
        await ws.send_json([room_id, type(room_id).__name__])

    @app.ws_route("/all/{a}/{b}")
    async def everything(ws: WebSocket, **params: str) -> None:
        await ws.accept()
        await ws.send_json(params)

    @app.ws_route("/typed/{n}/{u}")
    async def typed(ws: WebSocket, n: int, u: uuid.UUID) -> None:
        await ws.accept()
        await ws.send_json([n, type(n).__name__, type(u).__name__])

    token = uuid.uuid4()
    with TestClient(app) as client:
        assert reply(client, "/rooms/3/users/ann") == [3, "int"]
        # Annotations convert text parameters; a value that does not convert is a 404.
        assert reply(client, f"/typed/7/{token}") == [7, "int", "UUID"]
        assert refused(client, f"/typed/seven/{token}") == 404
        assert reply(client, "/all/x/y") == {"a": "x", "b": "y"}


def test_unknown_path_is_refused_at_the_handshake() -> None:
    app = NexiosApp()
    app.add_ws_route("/ws", say_path)
    with TestClient(app) as client:
        assert refused(client, "/nowhere") == 404


def test_plain_http_to_a_websocket_path_gets_426() -> None:
    app = NexiosApp()
    app.add_ws_route("/ws", say_path)
    with TestClient(app) as client:
        response = client.get("/ws")
        assert response.status_code == 426
        assert response.headers["upgrade"] == "websocket"
        assert client.get("/nowhere").status_code == 404


def test_websocket_to_an_http_path_is_refused() -> None:
    app = NexiosApp()

    @app.get("/page")
    async def page(request: Any, response: Any) -> Any:
        return response.text("page")

    with TestClient(app) as client:
        assert refused(client, "/page") == 404
        assert client.get("/page").text == "page"


def test_url_path_for_websocket_routes() -> None:
    app = NexiosApp()
    app.add_ws_route("/plain", say_path, name="plain")
    chat = WSRouter(prefix="/chat")
    chat.add_ws_route(WebsocketRoutes("/{room}", say_path, name="room"))
    app.mount_ws_router(chat)
    assert app.url_path_for("plain") == "/plain"
    assert app.url_path_for("room", room="lobby") == "/chat/lobby"
    with pytest.raises(NoMatchFound, match="'room' takes"):
        app.url_path_for("room")


def test_consumers_by_class_instance_and_as_route() -> None:
    class Echo(WebSocketConsumer):
        encoding = "json"
        path = "/by-class"

        async def on_receive(self, ws: WebSocket, data: Any) -> None:
            await ws.send_json({"echo": data, "instance": id(self)})

    app = NexiosApp()
    app.add_ws_route(Echo)
    shared = Echo()
    app.add_ws_route("/by-instance", shared)
    app.add_ws_route(Echo.as_route("/as-route"))
    with TestClient(app) as client:
        ids = set()
        for path in ["/by-class", "/by-class", "/as-route"]:
            with client.websocket_connect(path) as session:
                session.send_json(1)
                answer = session.receive_json()
                assert answer["echo"] == 1
                ids.add(answer["instance"])
        assert len(ids) == 3  # one instance per connection
        for _ in range(2):
            with client.websocket_connect("/by-instance") as session:
                session.send_json(2)
                assert session.receive_json()["instance"] == id(shared)


def test_bad_registrations_name_the_fix() -> None:
    app = NexiosApp()
    with pytest.raises(ImproperlyConfigured, match="must start with '/'"):
        app.add_ws_route("ws", say_path)
    with pytest.raises(ImproperlyConfigured, match="needs a handler"):
        app.add_ws_route("/ws")
    with pytest.raises(ImproperlyConfigured, match="async function"):
        app.add_ws_route("/ws", lambda ws: None)
    with pytest.raises(ImproperlyConfigured, match=r"WSRouter\(prefix='/chat'\)"):
        WSRouter("/chat")  # type: ignore[arg-type]

    class NoPath(WebSocketConsumer):
        pass

    with pytest.raises(ImproperlyConfigured, match="as_route"):
        app.add_ws_route(NoPath)
    with pytest.raises(ImproperlyConfigured, match="Unknown convertor"):
        app.add_ws_route("/x/{id:number}", say_path)
    with pytest.raises(ImproperlyConfigured, match="mount_ws_router takes a WSRouter"):
        app.mount_ws_router(object())  # type: ignore[arg-type]
