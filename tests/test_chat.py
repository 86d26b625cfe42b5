"""The chat example (examples/chat) as its clients see it, without a browser.

The WebSocket protocol and the HTTP endpoints run in process (``TestClient``, memory
broker); the presence stores run against memory and Redis with one contract; the
README's first command runs as a real process. The browser tests are in
test_chat_browser.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import examples.chat.app as chat_app
import httpx
import pytest
import redis.asyncio as aioredis
from examples.chat.app import app
from examples.chat.presence import MemoryPresence, Presence, PresenceUnavailable, RedisPresence
from examples.chat.protocol import MAX_NAME, MAX_TEXT

from _servers import ROOT, free_port
from nexios.exceptions import WebSocketDisconnect
from nexios.testing import AsyncTestClient, TestClient

TIMEOUT = 5.0


@pytest.fixture
async def client() -> AsyncIterator[AsyncTestClient]:
    assert type(app.channels.broker).__name__ == "MemoryBroker", "unset NEXIOS_BROKER_URL"
    async with TestClient(app) as client:
        yield client


@pytest.fixture
def room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


def path(room: str, name: str, tab: str | None = None) -> str:
    return f"/chat/{room}?" + urlencode({"name": name, "client": tab or f"tab-of-{name}"})


@contextlib.asynccontextmanager
async def person(
    client: AsyncTestClient, room: str, name: str, tab: str | None = None
) -> AsyncIterator[tuple[Any, dict[str, Any]]]:
    """In *room* as *name*: the session and the welcome it got."""
    async with client.websocket_connect(path(room, name, tab)) as ws:
        welcome = await ws.receive_json()
        assert welcome["type"] == "welcome", welcome
        yield ws, welcome


async def refused(client: AsyncTestClient, url: str) -> tuple[int, str | None]:
    async with client.websocket_connect(url) as ws:
        with pytest.raises(WebSocketDisconnect) as info:
            await ws.receive_json()
    return info.value.code, info.value.reason


# ---------------------------------------------------------------------- rooms


async def test_joining_shows_history_and_members_and_tells_the_room(
    client: AsyncTestClient, room: str
) -> None:
    async with person(client, room, "alice") as (alice, welcome):
        assert welcome["members"] == ["alice"]
        assert welcome["history"] == []
        await alice.send_json({"type": "message", "text": "  first!  "})
        said = await alice.receive_json()  # the sender gets its own message back
        assert said["type"] == "message"
        assert (said["name"], said["text"], said["room"]) == ("alice", "first!", room)

        async with person(client, room, "bob") as (_, welcome):
            assert welcome["members"] == ["alice", "bob"]
            assert welcome["history"] == [said]
            notice = await alice.receive_json()
            assert notice == {
                "type": "presence",
                "joined": ["bob"],
                "left": [],
                "members": ["alice", "bob"],
                "version": welcome["version"],
            }
        notice = await alice.receive_json()
        assert (notice["left"], notice["members"]) == (["bob"], ["alice"])
        assert notice["version"] > welcome["version"]


async def test_messages_reach_their_room_only(client: AsyncTestClient, room: str) -> None:
    other = room + "-other"
    async with (
        person(client, room, "alice") as (alice, _),
        person(client, room, "bob") as (bob, _),
        person(client, other, "carol") as (carol, _),
    ):
        await alice.receive_json()  # bob joined
        await alice.send_json({"type": "message", "text": "hi bob"})
        assert (await bob.receive_json())["text"] == "hi bob"
        # carol's next message is the announcement sent after: she never got "hi bob".
        response = await client.post(f"/rooms/{other}/announce", json={"text": "marker"})
        assert response.json() == {"room": other, "local_deliveries": 1}
        assert (await carol.receive_json())["text"] == "marker"


async def test_typing_reaches_the_others(client: AsyncTestClient, room: str) -> None:
    async with person(client, room, "alice") as (alice, _), person(client, room, "bob") as (bob, _):
        await alice.receive_json()  # bob joined
        await bob.send_json({"type": "typing"})
        assert await alice.receive_json() == {"type": "typing", "name": "bob"}
        # Not to bob himself: his next message is his own chat message.
        await bob.send_json({"type": "message", "text": "done"})
        assert (await bob.receive_json())["text"] == "done"


async def test_bad_messages_get_an_error_and_the_connection_stays(
    client: AsyncTestClient, room: str
) -> None:
    async with person(client, room, "alice") as (alice, _):
        for sent, error in [
            ("{not json", "Not valid JSON."),
            ("[1, 2]", "Expected a JSON object."),
            ('{"type": "shout", "text": "x"}', 'Unknown message: "type" must be'),
            ("{}", 'Unknown message: "type" must be'),
            ('{"type": "message"}', "text: Field required."),
            ('{"type": "message", "text": "   "}', "text: String should have at least 1"),
            ('{"type": "message", "text": 42}', "text: Input should be a valid string."),
            (
                '{"type": "message", "text": "%s"}' % ("x" * (MAX_TEXT + 1)),
                f"text: String should have at most {MAX_TEXT} characters.",
            ),
        ]:
            await alice.send_text(sent)
            answer = await alice.receive_json()
            assert answer["type"] == "error", (sent, answer)
            assert answer["error"].startswith(error), (sent, answer)
        await alice.send_bytes(b'{"type": "typing"}')
        assert await alice.receive_json() == {
            "type": "error",
            "error": "Send JSON as text messages.",
        }
        await alice.send_json({"type": "message", "text": "still here"})
        assert (await alice.receive_json())["text"] == "still here"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "Pick a name to join."),
        ("   ", "Pick a name to join."),
        ("x" * (MAX_NAME + 1), f"Names are {MAX_NAME} characters at most."),
        ("bad\x07name", "Names cannot contain control characters."),
    ],
)
async def test_bad_names_are_refused_with_1008(
    client: AsyncTestClient, room: str, name: str, reason: str
) -> None:
    assert await refused(client, path(room, name)) == (1008, reason)


async def test_bad_rooms_are_refused(client: AsyncTestClient) -> None:
    code, reason = await refused(client, path("no.dots", "alice"))
    assert (code, reason) == (1008, "Room names are 1 to 32 letters, digits, '-' or '_'.")
    response = await client.post("/rooms/no.dots/announce", json={"text": "x"})
    assert response.status_code == 404


async def test_a_name_is_taken_except_by_the_same_tab(client: AsyncTestClient, room: str) -> None:
    async with person(client, room, "alice", tab="tab-one-1") as (first, _):
        assert await refused(client, path(room, "alice", "tab-two-2")) == (
            1008,
            "That name is taken in this room.",
        )
        async with person(client, room, "bob") as (bob, _):
            await first.receive_json()  # bob joined
            # The same tab (a reload) takes the name back before its old connection left.
            async with person(client, room, "alice", tab="tab-one-1") as (second, welcome):
                assert welcome["members"] == ["alice", "bob"]
                await first.close()
                # The old connection's end says nothing: bob's next notice is his own
                # message, and alice is still there.
                await bob.receive_json()  # alice "joined" again
                await second.send_json({"type": "message", "text": "back"})
                assert (await bob.receive_json())["text"] == "back"
                roster = (await client.get(f"/rooms/{room}")).json()
                assert roster["members"] == ["alice", "bob"]


async def test_a_flood_is_closed_with_1008(client: AsyncTestClient, room: str) -> None:
    async with person(client, room, "alice") as (alice, _):
        for _ in range(31):  # the route allows bursts of 30
            await alice.send_json({"type": "typing"})
        with pytest.raises(WebSocketDisconnect) as info:
            await alice.receive_json()
        assert (info.value.code, info.value.reason) == (1008, "Rate limit exceeded")


# ---------------------------------------------------------------------- announcements


async def test_announcements_reach_the_room_and_its_history(
    client: AsyncTestClient, room: str
) -> None:
    async with person(client, room, "alice") as (alice, _):
        response = await client.post(f"/rooms/{room}/announce", json={"text": "Maintenance"})
        assert response.status_code == 200
        assert response.json() == {"room": room, "local_deliveries": 1}
        announced = await alice.receive_json()
        assert (announced["type"], announced["text"]) == ("announce", "Maintenance")
    async with person(client, room, "bob") as (_, welcome):
        assert welcome["history"] == [announced]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{nope", "Not valid JSON."),
        (b'{"text": ""}', "text: String should have at least 1 character."),
        (b'{"words": "hi"}', "text: Field required."),
        (b"[]", "Expected a JSON object."),
    ],
)
async def test_bad_announcements_get_422(
    client: AsyncTestClient, room: str, body: bytes, detail: str
) -> None:
    response = await client.post(f"/rooms/{room}/announce", content=body)
    assert (response.status_code, response.json()) == (422, {"detail": detail})


# ---------------------------------------------------------------------- presence stores


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def stores(request: pytest.FixtureRequest) -> tuple[Presence, Presence]:
    """Two processes' presence stores over the same backing store."""
    stores: tuple[Presence, Presence] = request.getfixturevalue(f"{request.param}_stores")
    return stores


@pytest.fixture
def memory_stores() -> tuple[Presence, Presence]:
    memory = MemoryPresence()  # one process: both are the same
    return memory, memory


@pytest.fixture
async def redis_stores(redis_url: str) -> AsyncIterator[tuple[Presence, Presence]]:
    one, two = RedisPresence(redis_url), RedisPresence(redis_url)
    await one.start()
    await two.start()
    try:
        yield one, two
    finally:
        await one.stop()
        await two.stop()


async def test_presence_contract(stores: tuple[Presence, Presence], room: str) -> None:
    one, two = stores
    assert (await two.roster(room)).names == []
    v1 = await one.claim(room, "alice", "tab-a", "conn-1")
    v2 = await two.claim(room, "bob", "tab-b", "conn-2")
    assert v1 is not None
    assert v2 is not None
    assert v2 > v1
    assert await two.claim(room, "alice", "tab-x", "conn-3") is None  # another tab's
    roster = await one.roster(room)
    assert (roster.version, roster.names, roster.gone) == (v2, ["alice", "bob"], [])
    # The same tab takes it back; the old connection's release is then a no-op.
    v3 = await one.claim(room, "alice", "tab-a", "conn-4")
    assert v3 is not None
    assert v3 > v2
    assert await one.release(room, "alice", "tab-a", "conn-1") is None
    v4 = await one.release(room, "alice", "tab-a", "conn-4")
    assert v4 is not None
    assert v4 > v3
    assert (await two.roster(room)).names == ["bob"]
    assert await two.release(room, "bob", "tab-b", "conn-2") is not None
    # An empty room is forgotten.
    assert (await one.roster(room)).version == 0


@pytest.mark.redis
async def test_redis_presence_drops_the_names_of_a_process_that_is_gone(
    redis_url: str, room: str
) -> None:
    gone, here = RedisPresence(redis_url), RedisPresence(redis_url)
    await gone.start()
    await here.start()
    try:
        await gone.claim(room, "alice", "tab-a", "conn-1")
        before = await here.claim(room, "bob", "tab-b", "conn-2")
        await gone.stop()  # as if its heartbeat had expired: no release
        roster = await here.roster(room)
        assert (roster.names, roster.gone) == (["bob"], ["alice"])
        assert before is not None
        assert roster.version > before
        assert await here.claim(room, "alice", "tab-x", "conn-3") is not None  # free again
        await here.release(room, "alice", "tab-x", "conn-3")
        await here.release(room, "bob", "tab-b", "conn-2")
    finally:
        await here.stop()


async def test_a_name_that_could_not_be_given_back_is_given_back_later(
    client: AsyncTestClient, room: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = chat_app.presence
    release = store.release
    reachable = False

    async def flaky_release(*args: str) -> int | None:
        if not reachable:
            raise PresenceUnavailable("Redis is unreachable")
        return await release(*args)

    monkeypatch.setattr(store, "release", flaky_release)
    async with person(client, room, "alice") as (alice, _):
        async with person(client, room, "bob"):
            await alice.receive_json()  # bob joined
        # bob left while the store was unreachable: he is still listed ...
        assert (await client.get(f"/rooms/{room}")).json()["members"] == ["alice", "bob"]
        reachable = True
        await chat_app.sweep_once()
        # ... until the next sweep.
        notice = await alice.receive_json()
        assert (notice["left"], notice["members"]) == (["bob"], ["alice"])


@pytest.mark.redis
async def test_people_are_claimed_again_when_redis_lost_them(
    redis_url: str, room: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisPresence(redis_url)
    monkeypatch.setattr(chat_app, "presence", store)
    async with (
        TestClient(app) as client,
        person(client, room, "alice") as (alice, _),
        person(client, room, "bob") as (_, welcome),
    ):
        await alice.receive_json()  # bob joined
        assert await store.heartbeat()
        # Redis restarts empty: the room and this process's heartbeat are gone.
        redis = aioredis.Redis.from_url(redis_url)
        try:
            await redis.delete(*store._keys(room), store._alive(store.process))
        finally:
            await redis.aclose()
        assert (await client.get(f"/rooms/{room}")).json()["members"] == []

        await chat_app.sweep_once()  # what every process does every HEARTBEAT seconds
        notice = await alice.receive_json()
        assert notice["members"] == ["alice", "bob"]
        assert notice["version"] > welcome["version"]  # the pages do not ignore it
        assert (await client.get(f"/rooms/{room}")).json()["members"] == ["alice", "bob"]


# ---------------------------------------------------------------------- the README


async def test_the_readme_command_starts_the_chat_and_prints_its_url() -> None:
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"```bash\n# 1\..*\n(.*)\n", readme)
    assert first is not None
    assert first.group(1).endswith(".venv/bin/python -m examples.chat")

    port = free_port()
    env = {**os.environ, "PORT": str(port), "NEXIOS_BROKER_URL": "", "PYTHONUNBUFFERED": "1"}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "examples.chat"),
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
        url = f"http://127.0.0.1:{port}/"
        assert line.startswith(f"nexios chat on {url} (memory broker"), line
        async with httpx.AsyncClient() as http:
            page = await _get_when_up(http, url)
        assert "Join a room" in page.text
        assert page.headers["content-type"].startswith("text/html")
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        await asyncio.wait_for(process.communicate(), 10)


async def _get_when_up(http: httpx.AsyncClient, url: str) -> httpx.Response:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        try:
            return await http.get(url, timeout=2)
        except httpx.TransportError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


def test_only_the_page_s_files_are_served() -> None:
    with TestClient(app) as client:
        assert client.get("/static/chat.js").headers["content-type"].endswith("javascript")
        assert client.get("/static/chat.css").headers["content-type"].startswith("text/css")
        assert client.get("/static/app.py").status_code == 404
        assert client.get("/static/..%2Fapp.py").status_code == 404
