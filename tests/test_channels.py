"""The channels contract: one suite, run on every broker.

Two apps sharing one broker stand for two processes (``memory://name`` hubs share like
Redis does). Every wait is bounded: a session's receive times out after 5 s.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from nexios import NexiosApp, WebSocket, WSRouter
from nexios.channels import Broker, ChannelLayer, MemoryBroker
from nexios.channels.log import Position
from nexios.exceptions import ImproperlyConfigured, WebSocketStateError
from nexios.testing import AsyncWebSocketSession, TestClient
from nexios.websockets.channels import Channel, ChannelBox, PayloadTypeEnum

BrokerFactory = Callable[[], Broker]


@pytest.fixture(params=["memory", "redis"])
def make_broker(request: pytest.FixtureRequest) -> BrokerFactory:
    """Brokers that share messages with each other, as processes sharing a broker do."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    if request.param == "memory":
        return lambda: MemoryBroker(name)
    url = request.getfixturevalue("redis_url")
    from nexios.channels.brokers.redis import RedisBroker

    return lambda: RedisBroker(url, prefix=name)


def chat_app(broker: Broker) -> NexiosApp:
    app = NexiosApp(broker=broker)

    @app.ws_route("/rooms/{room}")
    async def room(ws: WebSocket, room: str) -> None:
        ws.id = ws.query_params.get("id", ws.id)
        await ws.accept()
        await ws.join(room)
        await ws.send_text("joined")
        async for text in ws.iter_text():
            if text.startswith("leave "):
                await ws.leave(text[6:])
                await ws.send_text("left")
            elif text.startswith("join "):
                await ws.join(text[5:])
                await ws.send_text("joined")
            else:
                await ws.publish(room, {"from": ws.id, "text": text})

    return app


@contextlib.asynccontextmanager
async def two_processes(
    make_broker: BrokerFactory,
    build: Callable[[Broker], NexiosApp] = chat_app,
) -> AsyncIterator[tuple[NexiosApp, TestClient, NexiosApp, TestClient]]:
    app_a, app_b = build(make_broker()), build(make_broker())
    async with TestClient(app_a) as a, TestClient(app_b) as b:
        yield app_a, a, app_b, b


async def joined(session: AsyncWebSocketSession) -> AsyncWebSocketSession:
    assert await session.receive_text() == "joined"
    return session


async def test_group_messages_reach_members_in_every_process(make_broker: BrokerFactory) -> None:
    async with two_processes(make_broker) as (_, a, _, b):
        async with (
            a.websocket_connect("/rooms/lobby?id=ann") as ann,
            b.websocket_connect("/rooms/lobby?id=bob") as bob,
            b.websocket_connect("/rooms/other?id=eve") as eve,
        ):
            for session in (ann, bob, eve):
                await joined(session)
            await ann.send_text("hello")
            expected = {"from": "ann", "text": "hello"}
            assert await ann.receive_json() == expected
            assert await bob.receive_json() == expected
            # eve is in another room: her next message is her own room's.
            await eve.send_text("marker")
            assert await eve.receive_json() == {"from": "eve", "text": "marker"}


async def test_leaving_stops_delivery_and_closing_leaves_every_group(
    make_broker: BrokerFactory,
) -> None:
    async with two_processes(make_broker) as (app_a, a, app_b, b):
        async with (
            a.websocket_connect("/rooms/lobby?id=ann") as ann,
            b.websocket_connect("/rooms/lobby?id=bob") as bob,
        ):
            await joined(ann)
            await joined(bob)
            await bob.send_text("join news")
            await joined(bob)
            assert app_b.channels.groups() == {"nexios:app": 1, "lobby": 1, "news": 1}
            await bob.send_text("leave lobby")
            assert await bob.receive_text() == "left"
            await ann.send_text("anyone?")
            assert await ann.receive_json() == {"from": "ann", "text": "anyone?"}
            await app_a.channels.publish("news", "extra")
            assert await bob.receive_text() == "extra"  # not "anyone?": bob left lobby
        # Both connections are closed: nobody is in any group any more.
        assert app_a.channels.groups() == {}
        assert app_b.channels.groups() == {}


async def test_router_broadcast_reaches_that_routers_connections_everywhere(
    make_broker: BrokerFactory,
) -> None:
    def build(broker: Broker) -> NexiosApp:
        app = NexiosApp(broker=broker)
        chat = WSRouter(prefix="/chat")
        news = WSRouter(prefix="/news")

        async def listen(ws: WebSocket) -> None:
            ws.id = ws.query_params["id"]
            await ws.accept()
            await ws.send_text("joined")
            async for text in ws.iter_text():
                await ws.send_text(f"echo {text}")

        chat.add_ws_route("/general", listen)
        news.add_ws_route("/feed", listen)
        app.mount_ws_router(chat)
        app.mount_ws_router(news)
        app.state.routers = (chat, news)
        return app

    async with two_processes(make_broker, build) as (app_a, a, _, b):
        chat, news = app_a.state.routers
        async with (
            a.websocket_connect("/chat/general?id=c1") as c1,
            b.websocket_connect("/chat/general?id=c2") as c2,
            b.websocket_connect("/news/feed?id=n1") as n1,
        ):
            for session in (c1, c2, n1):
                await joined(session)
            assert await chat.broadcast("to chat") == 1  # one local member in app a
            assert await c1.receive_text() == "to chat"
            assert await c2.receive_text() == "to chat"
            await news.broadcast({"headline": "x"})
            assert await n1.receive_json() == {"headline": "x"}
            await app_a.broadcast("to all")
            for session in (c1, c2, n1):
                assert await session.receive_text() == "to all"
            await chat.broadcast_to(["c2", "n1", "nobody"], b"\x01direct")
            assert await c2.receive_bytes() == b"\x01direct"
            assert await n1.receive_bytes() == b"\x01direct"
            await c1.send_text("marker")  # c1 was not addressed: the echo comes next
            assert await c1.receive_text() == "echo marker"


async def test_history_is_shared_and_bounded(make_broker: BrokerFactory) -> None:
    def build(broker: Broker) -> NexiosApp:
        return NexiosApp(broker=broker, history_size=3)

    async with two_processes(make_broker, build) as (app_a, _, app_b, _):
        for i in range(5):
            await app_a.channels.publish("log", {"n": i}, save_history=True)
        # Every message is logged now (save_history is kept for its name); history()
        # returns the last history_size of them.
        await app_a.channels.publish("log", "logged too")
        history = await app_b.channels.history("log")
        assert [entry["payload"] for entry in history] == [{"n": 3}, {"n": 4}, "logged too"]
        # Each id is the message's position: offsets 4, 5, 6 of one epoch.
        positions = [Position.parse(entry["id"]) for entry in history]
        assert [p.offset for p in positions] == [4, 5, 6]
        assert len({p.epoch for p in positions}) == 1
        assert all(entry["timestamp"] > 0 for entry in history)
        assert [e["payload"] for e in await app_b.channels.history("log", 1)] == ["logged too"]
        assert len(await app_b.channels.history("log", 10)) == 6
        await app_b.channels.clear_history("log")
        assert await app_a.channels.history("log") == []
        # Its past is gone: the next message starts a new epoch at offset 1.
        after = await app_a.channels.publish("log", "again")
        assert after.position is not None
        assert after.position.offset == 1
        assert after.position.epoch != positions[0].epoch


async def test_a_message_seen_live_is_already_in_the_history(make_broker: BrokerFactory) -> None:
    """A client that reloads right after a message arrived finds it in the history, in
    the publisher's process and in the others."""

    def build(broker: Broker) -> NexiosApp:
        app = NexiosApp(broker=broker)

        @app.ws_route("/log")
        async def log(ws: WebSocket) -> None:
            await ws.accept()
            await ws.join("log")
            await ws.send_text("joined")
            async for text in ws.iter_text():
                await app.channels.publish("log", text, save_history=True)

        return app

    async with two_processes(make_broker, build) as (app_a, a, app_b, b):
        async with a.websocket_connect("/log") as ann, b.websocket_connect("/log") as bob:
            await joined(ann)
            await joined(bob)
            for i in range(20):
                await ann.send_text(f"line {i}")
                # The publisher's own member first: it is served before the broker is.
                assert await ann.receive_text() == f"line {i}"
                history = await app_a.channels.history("log", 1)
                assert [entry["payload"] for entry in history] == [f"line {i}"]
                assert await bob.receive_text() == f"line {i}"
                history = await app_b.channels.history("log", 1)
                assert [entry["payload"] for entry in history] == [f"line {i}"]
        await app_a.channels.clear_history("log")


async def test_payload_kinds_and_member_encodings(make_broker: BrokerFactory) -> None:
    def build(broker: Broker) -> NexiosApp:
        app = NexiosApp(broker=broker)

        @app.ws_route("/as/{encoding}")
        async def member(ws: WebSocket, encoding: str) -> None:
            await ws.accept()
            await ws.join("g", encoding=encoding)  # type: ignore[arg-type]
            await ws.send_text("joined")
            async for _ in ws.iter_text():
                pass

        return app

    async with two_processes(make_broker, build) as (app_a, _, _, b):
        async with (
            b.websocket_connect("/as/auto") as auto,
            b.websocket_connect("/as/json") as as_json,
            b.websocket_connect("/as/bytes") as as_bytes,
        ):
            for session in (auto, as_json, as_bytes):
                await joined(session)
            await app_a.channels.publish("g", "plain")
            assert await auto.receive_text() == "plain"
            assert await as_json.receive_text() == '"plain"'
            assert await as_bytes.receive_bytes() == b"plain"
            await app_a.channels.publish("g", {"k": [1, 2]})
            assert await auto.receive_json() == {"k": [1, 2]}
            assert await as_json.receive_json() == {"k": [1, 2]}
            assert await as_bytes.receive_bytes() == b'{"k":[1,2]}'
            await app_a.channels.publish("g", b"\x00\xff")
            for session in (auto, as_json, as_bytes):
                assert await session.receive_bytes() == b"\x00\xff"


async def test_channel_and_channelbox(make_broker: BrokerFactory) -> None:
    def build(broker: Broker) -> NexiosApp:
        app = NexiosApp(broker=broker)

        @app.ws_route("/room/{room_name}")
        async def room_handler(ws: WebSocket, room_name: str) -> None:
            await ws.accept()
            channel = Channel(websocket=ws, payload_type=PayloadTypeEnum.JSON.value, expires=3600)
            channel.metadata["room"] = room_name
            assert await ChannelBox.add_channel_to_group(channel, group_name=room_name)
            assert not await ChannelBox.add_channel_to_group(channel, group_name=room_name)
            await channel.send({"welcome": room_name, "active": channel.is_active})
            try:
                while True:
                    data = await ws.receive_json()
                    await ChannelBox.group_send(
                        group_name=room_name, payload=data, save_history=True
                    )
            finally:
                await ChannelBox.remove_channel_from_group(channel, room_name)

        return app

    async with two_processes(make_broker, build) as (_, a, _, b):
        async with (
            a.websocket_connect("/room/r1") as one,
            b.websocket_connect("/room/r1") as two,
        ):
            assert await one.receive_json() == {"welcome": "r1", "active": True}
            assert await two.receive_json() == {"welcome": "r1", "active": True}
            groups = await ChannelBox.show_groups()
            assert len(groups["r1"]) == 2  # both "processes" share this test's one box
            await one.send_json({"msg": "hi"})
            assert await one.receive_json() == {"msg": "hi"}
            assert await two.receive_json() == {"msg": "hi"}
            history = await ChannelBox.show_history("r1")
            assert [entry["payload"] for entry in history] == [{"msg": "hi"}]
            await ChannelBox.flush_history("r1")
            assert await ChannelBox.show_history("r1") == []
        assert "r1" not in await ChannelBox.show_groups()


async def test_join_before_accept_and_without_an_app_name_the_fix() -> None:
    errors: list[str] = []
    app = NexiosApp()

    @app.ws_route("/early")
    async def early(ws: WebSocket) -> None:
        try:
            await ws.join("g")
        except WebSocketStateError as exc:
            errors.append(str(exc))
        await ws.accept()

    async with TestClient(app) as client, client.websocket_connect("/early"):
        pass
    assert 'call "await ws.accept()" first' in errors[0]
    with pytest.raises(ImproperlyConfigured, match=r"app\.mount_ws_router"):
        await WSRouter().broadcast("x")
    with pytest.raises(ImproperlyConfigured, match="Unknown broker URL"):
        NexiosApp(broker="kafka://x")


async def test_broker_is_chosen_by_url_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(NexiosApp().channels.broker, MemoryBroker)
    monkeypatch.setenv("NEXIOS_BROKER_URL", "memory://from-env")
    broker = NexiosApp().channels.broker
    assert isinstance(broker, MemoryBroker)
    assert broker.name == "from-env"
    assert isinstance(ChannelLayer("memory://x").broker, MemoryBroker)
    from nexios.channels.brokers.redis import RedisBroker

    assert isinstance(NexiosApp(broker="redis://127.0.0.1:6379/0").channels.broker, RedisBroker)


async def test_a_single_app_on_memory_never_publishes_to_the_broker() -> None:
    app = chat_app(MemoryBroker(f"solo-{uuid.uuid4().hex}"))
    published: list[Any] = []
    original = app.channels.broker.publish

    async def spy(channel: str, data: bytes) -> None:
        published.append(channel)
        await original(channel, data)

    app.channels.broker.publish = spy  # type: ignore[method-assign]
    async with TestClient(app) as client, client.websocket_connect("/rooms/x") as session:
        await joined(session)
        await session.send_text("hi")
        assert (await session.receive_json())["text"] == "hi"
    assert published == []
    assert app.channels.healthy


async def test_a_process_stops_receiving_a_group_when_its_last_member_leaves(
    make_broker: BrokerFactory,
) -> None:
    async with two_processes(make_broker) as (app_a, _, app_b, b):
        async with b.websocket_connect("/rooms/lobby?id=bob") as bob:
            await joined(bob)
            await bob.send_text("join quiet")
            await joined(bob)
            await bob.send_text("leave quiet")  # the last (only) member in process b
            assert await bob.receive_text() == "left"
            before = app_b.channels.stats.received_remote
            await app_a.channels.publish("quiet", "unheard")  # b no longer subscribes
            await app_a.channels.publish("lobby", "marker")  # b does
            assert await bob.receive_text() == "marker"
            assert app_b.channels.stats.received_remote == before + 1
