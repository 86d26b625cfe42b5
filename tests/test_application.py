"""The application: its names, lifespan, HTTP wiring, run() and the CLI."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import nexios
from nexios import Nexios, NexiosApp, WebSocketConfig, get_application
from nexios.cli import load_app, main
from nexios.config import ServerLimits
from nexios.testing import LifespanFailed, TestClient

PUBLIC_NAMES = [
    "URL",
    "Address",
    "FileResponse",
    "HTMLResponse",
    "HTTPException",
    "Headers",
    "JSONResponse",
    "Nexios",
    "NexiosApp",
    "NexiosError",
    "NexiosResponse",
    "PlainTextResponse",
    "QueryParams",
    "RedirectResponse",
    "Request",
    "Response",
    "Route",
    "Router",
    "State",
    "WSRouter",
    "WebSocket",
    "WebSocketConfig",
    "WebSocketConsumer",
    "WebSocketDisconnect",
    "WebSocketEndpoint",
    "WebSocketException",
    "WebSocketState",
    "WebsocketRoutes",
    "get_application",
]


def test_public_names_are_exactly_the_intended_ones() -> None:
    assert nexios.__all__ == PUBLIC_NAMES
    for name in PUBLIC_NAMES:
        assert getattr(nexios, name) is not None


def test_the_seed_import_paths_give_the_same_classes() -> None:
    from nexios.websocket import WebSocketDisconnect as Singular
    from nexios.websocket.consumer import WebSocketEndpoint
    from nexios.websockets import WebSocket, WebSocketDisconnect
    from nexios.websockets.base import WebSocket as BaseWebSocket
    from nexios.websockets.base import WebSocketDisconnect as BaseDisconnect
    from nexios.websockets.consumers import WebSocketConsumer
    from nexios.websockets.errors import WebSocketDisconnect as ErrorsDisconnect

    assert WebSocket is BaseWebSocket is nexios.WebSocket
    assert WebSocketDisconnect is Singular is BaseDisconnect is ErrorsDisconnect
    assert WebSocketEndpoint is WebSocketConsumer


def test_three_ways_to_make_an_app() -> None:
    assert Nexios is NexiosApp
    assert isinstance(get_application(title="t"), NexiosApp)
    assert get_application(title="t").title == "t"


def test_startup_and_shutdown_hooks_sync_and_async_in_order() -> None:
    calls: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: NexiosApp) -> AsyncIterator[dict[str, Any]]:
        calls.append("lifespan enter")
        yield {"db": "connected"}
        calls.append("lifespan exit")

    app = NexiosApp(lifespan=lifespan)

    @app.on_startup
    async def start() -> None:
        calls.append("async startup")

    @app.on_startup
    def start_sync() -> None:
        calls.append("sync startup")

    @app.on_shutdown
    def stop() -> None:
        calls.append("sync shutdown")

    @app.get("/db")
    async def db(request: Any, response: Any) -> Any:
        return {"db": request.state.db}

    with TestClient(app) as client:
        assert calls == ["lifespan enter", "async startup", "sync startup"]
        assert client.get("/db").json() == {"db": "connected"}
    assert calls[3:] == ["sync shutdown", "lifespan exit"]


def test_a_failing_startup_hook_stops_the_start_with_a_clear_message() -> None:
    app = NexiosApp()

    @app.on_startup
    async def connect_database() -> None:
        raise ConnectionError("database unreachable")

    with pytest.raises(LifespanFailed) as failed, TestClient(app):
        pass
    assert "Application startup failed: ConnectionError: database unreachable" in str(failed.value)


def test_http_handlers_on_the_app() -> None:
    app = NexiosApp()

    @app.get("/items/{id:int}")
    async def item(request: Any, response: Any) -> Any:
        return response.json({"id": request.path_params["id"], "q": request.query_params.get("q")})

    @app.post("/items")
    async def create(request: Any, response: Any) -> Any:
        return response.json(await request.json(), status_code=201)

    @app.route("/either", methods=["PUT", "DELETE"])
    async def either(request: Any, response: Any) -> Any:
        return {"method": request.method}

    @app.get("/boom")
    async def boom(request: Any, response: Any) -> Any:
        raise nexios.HTTPException(418, "short and stout")

    with TestClient(app) as client:
        assert client.get("/items/3?q=x").json() == {"id": 3, "q": "x"}
        created = client.post("/items", json={"name": "a"})
        assert (created.status_code, created.json()) == (201, {"name": "a"})
        assert client.put("/either").json() == {"method": "PUT"}
        assert client.get("/either").status_code == 405
        teapot = client.get("/boom")
        assert (teapot.status_code, teapot.json()) == (418, {"detail": "short and stout"})
    assert app.url_path_for("item", id=5) == "/items/5"


def test_an_unexpected_http_error_is_a_500() -> None:
    app = NexiosApp()

    @app.get("/crash")
    async def crash(request: Any, response: Any) -> Any:
        raise RuntimeError("oops")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/crash")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal Server Error"}


def test_run_passes_the_websocket_settings_to_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run(app: Any, host: str, port: int, **options: Any) -> None:
        seen.update(app=app, host=host, port=port, **options)

    monkeypatch.setattr("nexios.server.run", fake_run)
    config = WebSocketConfig(
        ping_interval=5,
        ping_timeout=3,
        max_message_size=4096,
        compression=True,
        handshake_timeout=4,
        max_fragments=16,
        shutdown_timeout=7,
    )
    app = NexiosApp(websocket_config=config)
    app.run("0.0.0.0", 9000, log_level="warning")
    assert seen == {
        "app": app,
        "host": "0.0.0.0",
        "port": 9000,
        "ping_interval": 5,
        "ping_timeout": 3,
        "max_message_size": 4096,
        "compression": True,
        "limits": ServerLimits(handshake_timeout=4, max_fragments=16, shutdown_timeout=7),
        "log_level": "warning",
    }


def test_run_builds_a_uvicorn_config_with_the_nexios_protocol() -> None:
    from nexios.server import NexiosWebSocketProtocol, make_config

    config = make_config(NexiosApp(), ping_interval=1.5, max_message_size=10)
    assert config.ws is NexiosWebSocketProtocol
    assert (config.ws_ping_interval, config.ws_max_size) == (1.5, 10)
    assert config.ws_per_message_deflate is False
    # The shutdown drain: handlers still running after it are cancelled.
    assert config.timeout_graceful_shutdown == ServerLimits().shutdown_timeout
    with pytest.raises(TypeError, match="shutdown_timeout"):
        make_config(NexiosApp(), timeout_graceful_shutdown=3)


def test_every_server_limit_is_a_websocket_config_field_with_the_same_default() -> None:
    import dataclasses

    for field in dataclasses.fields(ServerLimits):
        assert getattr(WebSocketConfig(), field.name) == field.default, field.name
    assert WebSocketConfig(max_backlog=5).server_limits() == ServerLimits(max_backlog=5)


def test_websocket_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_message_size"):
        WebSocketConfig(max_message_size=0)
    with pytest.raises(ValueError, match="ping_interval must be positive"):
        WebSocketConfig(ping_interval=-1)
    with pytest.raises(ValueError, match="handshake_timeout must be a positive"):
        WebSocketConfig(handshake_timeout=0)
    with pytest.raises(ValueError, match="max_fragments must be at least 1"):
        WebSocketConfig(max_fragments=0)


def test_cli_loads_and_runs_an_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "chatapp.py").write_text("from nexios import NexiosApp\napp = NexiosApp()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    served: list[Any] = []
    monkeypatch.setattr(
        NexiosApp, "run", lambda self, host, port, **kw: served.append((host, port))
    )
    main(["run", "chatapp:app", "--port", "8123"])
    assert served == [("127.0.0.1", 8123)]
    assert isinstance(load_app("chatapp:app"), NexiosApp)
    with pytest.raises(SystemExit, match="no attribute 'nope'"):
        load_app("chatapp:nope")
    with pytest.raises(SystemExit, match="MODULE:APP"):
        load_app("chatapp")
