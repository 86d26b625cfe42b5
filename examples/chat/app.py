"""nexios chat: rooms with history, presence and typing, behind one page with no build step.

Run it with ``python -m examples.chat`` and open the URL it prints. With
``NEXIOS_BROKER_URL=redis://127.0.0.1:6379/0``, several processes (``PORT=8001``,
``PORT=8002``) share the rooms, their history and the member lists. docs/chat.md says how.

* ``GET /``: the page (``static/``); ``GET /static/{file}``: its CSS and script.
* ``WS /chat/{room}?name=...&client=...``: a person in a room (the protocol is in
  docs/chat.md and ``protocol.py``).
* ``POST /rooms/{room}/announce`` ``{"text": "..."}``: push an announcement to the room
  from outside; it is kept in the history like a message.
* ``GET /rooms/{room}``: who is there. ``GET /health``: a readiness probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from nexios import NexiosApp, WebSocket, WebSocketConfig, WSRouter
from nexios.channels import Bounds
from nexios.exceptions import HTTPException, WebSocketDisconnect
from nexios.http.request import Request
from nexios.http.response import NexiosResponse

from .presence import HEARTBEAT, PresenceUnavailable, Roster, presence_for
from .protocol import (
    CLIENT_ID,
    HISTORY_KEPT,
    HISTORY_ON_JOIN,
    INBOUND,
    Announcement,
    Say,
    describe,
    name_problem,
    room_problem,
)

logger = logging.getLogger("nexios.chat")

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {"chat.css", "chat.js"}
BROKER_URL = os.environ.get("NEXIOS_BROKER_URL") or "memory://"

# A chat message is small: anything over 16 KiB closes the connection (1009).
app = NexiosApp(
    title="nexios chat",
    broker=BROKER_URL,
    websocket_config=WebSocketConfig(max_message_size=16 * 1024),
    history_size=HISTORY_ON_JOIN,
    # A room keeps its last messages however long it stays quiet.
    log=Bounds(max_count=HISTORY_KEPT, max_age=None),
)
presence = presence_for(BROKER_URL)

# Per connection: 30 messages at once, 3 a second on average (typing notices included);
# beyond, the connection is closed with 1008 "Rate limit exceeded".
ROOM_CONFIG = WebSocketConfig(rate_limit=(30, 10.0))
chat = WSRouter(prefix="/chat")

# The people connected to this process: room, name and tab of each connection.
here: dict[WebSocket, tuple[str, str, str]] = {}
# Names of people who left while the presence store was unreachable: (room, name, tab,
# connection id). The sweep gives them back once it is reachable again.
unreleased: list[tuple[str, str, str, str]] = []


def group(room: str) -> str:
    """The room's messages: logged, so they are its history."""
    return f"chat:{room}"


def events(room: str) -> str:
    """Who is here and who is typing: for the moment, kept out of the history."""
    return f"chat-events:{room}"


def now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------------- the page


@app.get("/")
async def index(request: Request, response: NexiosResponse) -> NexiosResponse:
    return response.file(STATIC / "index.html", headers={"cache-control": "no-cache"})


@app.get("/static/{name}")
async def asset(request: Request, response: NexiosResponse) -> NexiosResponse:
    name = request.path_params["name"]
    if name not in ASSETS:
        raise HTTPException(404, f"No such file: {name}")
    return response.file(STATIC / name, headers={"cache-control": "no-cache"})


# ---------------------------------------------------------------------- a person in a room


@chat.ws_route("/{room}", config=ROOM_CONFIG)
async def room_socket(ws: WebSocket, room: str) -> None:
    # Accept first, then refuse with 1008 and a reason: a browser never sees the body
    # of a refused handshake, but it does see a close reason.
    await ws.accept()
    name = (ws.query_params.get("name") or "").strip()
    problem = room_problem(room) or name_problem(name)
    if problem is not None:
        await ws.close(1008, problem)
        return
    # The browser tab's id survives a reload: the reloaded page may take its name back
    # before the server noticed that the old connection is gone.
    client = ws.query_params.get("client") or ""
    if CLIENT_ID.fullmatch(client) is None:
        client = ws.id
    try:
        if await presence.claim(room, name, client, ws.id) is None:
            await ws.close(1008, "That name is taken in this room.")
            return
        here[ws] = (room, name, client)
        try:
            await enter(ws, room, name)
            await converse(ws, room, name)
        except WebSocketDisconnect:
            pass
        finally:
            del here[ws]
            await leave(ws, room, name, client)
    except PresenceUnavailable as exc:
        logger.warning("Presence unavailable: %s", exc)
        await ws.close(1013, "Presence is unavailable: try again later.")


async def enter(ws: WebSocket, room: str, name: str) -> None:
    """Join the room's group, then send the history and the members, then tell the room.

    Joining first means nothing published meanwhile is missed; the page drops what it
    gets twice (by message id) and keeps the member list with the highest version.
    """
    await ws.join(group(room))
    await ws.join(events(room))
    history = await app.channels.history(group(room), HISTORY_ON_JOIN)
    roster = await presence.roster(room)
    await ws.send_json(
        {
            "type": "welcome",
            "room": room,
            "name": name,
            "members": roster.names,
            "version": roster.version,
            "history": [entry["payload"] for entry in history],
        }
    )
    await tell_presence(room, roster, joined=[name], exclude=ws)


async def converse(ws: WebSocket, room: str, name: str) -> None:
    """Validate each message; a bad one gets an error back, and the connection stays."""
    while True:
        text = (await ws.receive()).get("text")
        if text is None:
            await ws.send_json({"type": "error", "error": "Send JSON as text messages."})
            continue
        try:
            message = INBOUND.validate_json(text)
        except ValidationError as exc:
            await ws.send_json({"type": "error", "error": describe(exc)})
            continue
        if isinstance(message, Say):
            said = {"type": "message", "room": room, "name": name, "text": message.text}
            await say(room, said)
        else:
            await ws.publish(events(room), {"type": "typing", "name": name}, exclude_self=True)


async def leave(ws: WebSocket, room: str, name: str, client: str) -> None:
    try:
        await give_back(room, name, client, ws.id, exclude=ws)
    except PresenceUnavailable:
        unreleased.append((room, name, client, ws.id))  # the sweep tries again
        raise


async def give_back(
    room: str, name: str, client: str, conn: str, exclude: WebSocket | None = None
) -> None:
    # Only the connection that still holds the name tells the room: a page that
    # reloaded has already taken it back.
    if await presence.release(room, name, client, conn) is not None:
        await tell_presence(room, await presence.roster(room), left=[name], exclude=exclude)


async def say(room: str, payload: dict[str, Any]) -> int:
    """Publish a message (or announcement) to the room, everywhere, and keep it."""
    payload = {**payload, "id": uuid.uuid4().hex, "ts": now_ms()}
    return await app.channels.publish(group(room), payload, save_history=True)


async def tell_presence(
    room: str,
    roster: Roster,
    *,
    joined: list[str] | None = None,
    left: list[str] | None = None,
    exclude: WebSocket | None = None,
) -> None:
    notice = {
        "type": "presence",
        "joined": joined or [],
        "left": [*(left or []), *roster.gone],
        "members": roster.names,
        "version": roster.version,
    }
    await app.channels.publish(events(room), notice, exclude=exclude)


app.mount_ws_router(chat)


# ---------------------------------------------------------------------- HTTP


def room_of(request: Request) -> str:
    """The ``{room}`` of the path; 404 if it is not a room name."""
    room: str = request.path_params["room"]
    problem = room_problem(room)
    if problem is not None:
        raise HTTPException(404, problem)
    return room


@app.post("/rooms/{room}/announce")
async def announce(request: Request) -> dict[str, Any]:
    room = room_of(request)
    try:
        body = Announcement.model_validate_json(await request.body())
    except ValidationError as exc:
        raise HTTPException(422, describe(exc)) from None
    delivered = await say(room, {"type": "announce", "room": room, "text": body.text})
    return {"room": room, "local_deliveries": delivered}


@app.get("/rooms/{room}")
async def who(request: Request) -> dict[str, Any]:
    room = room_of(request)
    roster = await presence.roster(room)
    if roster.gone:
        await tell_presence(room, roster)
    return {"room": room, "members": roster.names, "version": roster.version}


@app.get("/health")
async def health(request: Request) -> dict[str, Any]:
    return {"broker_healthy": app.channels.healthy}


# ---------------------------------------------------------------------- life


_sweeper: asyncio.Task[None] | None = None


@app.on_startup
async def start_presence() -> None:
    global _sweeper
    await presence.start()
    _sweeper = asyncio.create_task(sweep())


@app.on_shutdown
async def stop_presence() -> None:
    if _sweeper is not None:
        _sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await _sweeper
    await presence.stop()


async def sweep() -> None:
    """Every HEARTBEAT seconds, `sweep_once`; an unreachable store is logged once."""
    down = False
    while True:
        await asyncio.sleep(HEARTBEAT)
        try:
            await sweep_once()
        except PresenceUnavailable as exc:
            if not down:
                logger.warning("Presence unavailable, retrying: %s", exc)
            down = True
        else:
            if down:
                logger.info("Presence available again.")
            down = False


async def sweep_once() -> None:
    """Keep this process's names alive (or claim them again if the store lost them),
    give back those it could not, and drop those of processes that died."""
    if not await presence.heartbeat():
        await reclaim()
    while unreleased:
        await give_back(*unreleased[0])
        del unreleased[0]
    for group_name in list(app.channels.groups()):
        room = group_name.removeprefix("chat:")
        if room != group_name:
            roster = await presence.roster(room)
            if roster.gone:
                await tell_presence(room, roster)


async def reclaim() -> None:
    """The presence store lost this process's people: claim their names again.

    Redis restarted empty, or this process stalled and the others dropped its names. A
    name somebody else took meanwhile is theirs: that connection is refused (1008).
    """
    rooms: set[str] = set()
    for ws, (room, name, client) in list(here.items()):
        if await presence.claim(room, name, client, ws.id) is None:
            await ws.close(1008, "That name is taken in this room.")
        else:
            rooms.add(room)
    for room in rooms:
        await tell_presence(room, await presence.roster(room))
    logger.info("Presence: claimed %d names in %d rooms again.", len(here), len(rooms))
