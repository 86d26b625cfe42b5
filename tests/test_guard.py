"""Origins, connection limits, rate limits and idle timeouts: WebSocketConfig's guards."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from nexios import NexiosApp, WebSocket, WebSocketConfig
from nexios.testing import TestClient, WebSocketDenied, WebSocketDisconnect
from nexios.websockets.guard import origin_allowed

TIMEOUT = 5.0


def echo_app(config: WebSocketConfig, route_config: WebSocketConfig | None = None) -> NexiosApp:
    app = NexiosApp(websocket_config=config)

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        async for text in ws.iter_text():
            await ws.send_text(text)

    app.add_ws_route("/ws", echo)
    app.add_ws_route("/free", echo, config=route_config or WebSocketConfig())
    return app


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://chat.example.com", True),
        ("https://CHAT.example.com/", True),
        ("https://eu.example.com", True),
        ("https://example.com", False),  # the wildcard covers subdomains only
        ("http://eu.example.com", False),  # another scheme
        ("https://evil.com", False),
        ("https://example.com.evil.com", False),
        ("null", False),
        # Parsed, not matched as strings: a wildcard stands for whole labels of the host.
        ("https://a.b.example.com", True),
        ("https://eu.example.com:443", True),  # the default port, written out
        ("https://eu.example.com:8443", False),  # another port
        ("https://evil.com/.example.com", False),  # a path: not an origin at all
        ("https://evil.com?.example.com", False),
        ("https://evil.com#.example.com", False),
        ("https://evil.com\\.example.com", False),
        ("https://user@eu.example.com", False),
        ("https://.example.com", False),  # an empty label
        ("https://eu.example.com.", False),
    ],
)
def test_origin_matching(origin: str, allowed: bool) -> None:
    patterns = ("https://chat.example.com", "https://*.example.com")
    assert origin_allowed(origin, patterns) is allowed


def test_a_handshake_from_another_origin_is_refused_with_403() -> None:
    app = echo_app(WebSocketConfig(allowed_origins=["https://chat.example.com"]))
    with TestClient(app) as client:
        with pytest.raises(WebSocketDenied) as denied:
            with client.websocket_connect("/ws", headers={"Origin": "https://evil.com"}):
                pass
        assert (denied.value.status_code, denied.value.text) == (403, "Origin not allowed")
        headers = {"Origin": "https://chat.example.com"}
        with client.websocket_connect("/ws", headers=headers) as ws:
            ws.send_text("hi")
            assert ws.receive_text() == "hi"
        with client.websocket_connect("/ws") as ws:  # no Origin: not a browser
            ws.send_text("hi")
            assert ws.receive_text() == "hi"
        # A route with its own config (no origin list) allows every origin.
        with client.websocket_connect("/free", headers={"Origin": "https://evil.com"}):
            pass
    assert app.guard.stats.refused_origin == 1


def test_connections_beyond_the_limits_are_refused_with_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = echo_app(WebSocketConfig(max_connections=2))
    with TestClient(app) as client:
        with client.websocket_connect("/ws"), client.websocket_connect("/ws"):
            for _ in range(2):
                with pytest.raises(WebSocketDenied) as denied, client.websocket_connect("/ws"):
                    pass
                assert (denied.value.status_code, denied.value.text) == (503, "Server at capacity")
        # Both closed: there is room again.
        with client.websocket_connect("/ws") as ws:
            ws.send_text("room")
            assert ws.receive_text() == "room"
    assert app.guard.stats.refused_capacity == 2
    assert app.guard.open == 0
    assert caplog.text.count("Refused a WebSocket handshake") == 1  # logged once


async def test_connections_per_client_are_limited() -> None:
    app = echo_app(WebSocketConfig(max_connections_per_client=1))
    async with TestClient(app) as client, client.websocket_connect("/ws"):
        with pytest.raises(WebSocketDenied) as denied:
            async with client.websocket_connect("/ws"):
                pass
        assert denied.value.status_code == 503
        assert denied.value.text == "Too many connections from this client"
    async with (
        TestClient(app, client=("10.0.0.1", 1)) as a,
        TestClient(app, client=("10.0.0.2", 1)) as b,
        a.websocket_connect("/ws"),
        b.websocket_connect("/ws"),
    ):
        assert app.guard.per_client == {"10.0.0.1": 1, "10.0.0.2": 1}
    assert app.guard.per_client == {}


def test_a_client_over_the_rate_limit_is_closed_with_1008() -> None:
    app = echo_app(WebSocketConfig(rate_limit=(3, 60.0)))
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        for i in range(3):
            ws.send_text(str(i))
            assert ws.receive_text() == str(i)
        ws.send_text("one too many")
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert (closed.value.code, closed.value.reason) == (1008, "Rate limit exceeded")
    assert app.guard.stats.rate_limited == 1


async def test_the_rate_limit_refills_over_time() -> None:
    app = echo_app(WebSocketConfig(rate_limit=(2, 0.2)))  # 10 messages a second
    async with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        for i in range(6):
            await ws.send_text(str(i))
            assert await ws.receive_text() == str(i)
            await asyncio.sleep(0.15)  # spacing the messages is the point of the test


def test_an_idle_connection_is_closed_with_1001() -> None:
    app = echo_app(WebSocketConfig(idle_timeout=0.2))
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        ws.send_text("still here")
        assert ws.receive_text() == "still here"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text(timeout=TIMEOUT)
    assert (closed.value.code, closed.value.reason) == (1001, "Idle timeout")
    assert app.guard.stats.idle_closed == 1


def test_bad_settings_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"allowed_origins=\['https://a.com'\]"):
        WebSocketConfig(allowed_origins="https://a.com")
    for pattern in (
        "*.example.com",
        "https://*example.com",
        "https://a.com/app",
        "https://a.*.com",
    ):
        with pytest.raises(ValueError, match=r"is not an origin.*https://\*\.example\.com"):
            WebSocketConfig(allowed_origins=[pattern])
    with pytest.raises(ValueError, match=r"\(messages, seconds\)"):
        WebSocketConfig(rate_limit=(0, 1.0))
    with pytest.raises(ValueError, match="max_connections must be at least 1"):
        WebSocketConfig(max_connections=0)
    with pytest.raises(ValueError, match="idle_timeout must be positive"):
        WebSocketConfig(idle_timeout=0)


# On a real server, with the websockets client


async def test_a_wildcard_origin_matches_whole_labels_on_a_real_server(live_server: Any) -> None:
    """Before, the wildcard was a raw suffix match: this handshake was accepted."""
    app = echo_app(WebSocketConfig(allowed_origins=["https://*.example.com"]))
    async with live_server(app) as server:
        url = server.ws + "/ws"
        for origin in ("https://evil.com/.example.com", "https://example.com.evil.com"):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url, origin=origin, open_timeout=TIMEOUT):  # type: ignore[arg-type]
                    pass
            assert refused.value.response.status_code == 403, origin
        async with connect(url, origin="https://eu.example.com", open_timeout=TIMEOUT) as ws:  # type: ignore[arg-type]
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hi"
    assert app.guard.stats.refused_origin == 2


async def test_guards_on_a_real_server(live_server: Any) -> None:
    config = WebSocketConfig(
        allowed_origins=["https://chat.example.com"],
        max_connections=1,
        rate_limit=(2, 60.0),
        idle_timeout=0.3,
    )
    app = echo_app(config)
    async with live_server(app) as server:
        url = server.ws + "/ws"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, origin="https://evil.com", open_timeout=TIMEOUT):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        async with connect(url, origin="https://chat.example.com", open_timeout=TIMEOUT) as ws:  # type: ignore[arg-type]
            with pytest.raises(InvalidStatus) as full:
                async with connect(url, open_timeout=TIMEOUT):
                    pass
            assert full.value.response.status_code == 503
            for text in ("a", "b"):
                await ws.send(text)
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == text
            await ws.send("c")
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
                1008,
                "Rate limit exceeded",
            )
        async with connect(url, open_timeout=TIMEOUT) as ws:
            with pytest.raises(ConnectionClosed) as idle:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert idle.value.rcvd is not None
            assert (idle.value.rcvd.code, idle.value.rcvd.reason) == (1001, "Idle timeout")
        assert server.errors == []


async def test_connections_per_client_on_a_real_server(live_server: Any) -> None:
    app = echo_app(WebSocketConfig(max_connections_per_client=2))
    ended: asyncio.Queue[None] = asyncio.Queue()

    @app.on("disconnect")
    async def gone(ws: WebSocket) -> None:  # after the guard let the connection go
        ended.put_nowait(None)

    async with live_server(app) as server:
        url = server.ws + "/ws"
        async with connect(url, open_timeout=TIMEOUT), connect(url, open_timeout=TIMEOUT):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url, open_timeout=TIMEOUT):
                    pass
            response = refused.value.response
            assert (response.status_code, response.body) == (
                503,
                b"Too many connections from this client",
            )
        # Both closed: once their handlers have ended, the client may connect again.
        for _ in range(2):
            await asyncio.wait_for(ended.get(), TIMEOUT)
        assert app.guard.per_client == {}
        async with connect(url, open_timeout=TIMEOUT) as ws:
            await ws.send("again")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "again"
