"""A tiny chat-room app that ``tests/test_cluster.py`` runs as real server processes.

Serve it with ``NEXIOS_BROKER_URL=redis://127.0.0.1:6379/0 nexios run tests.cluster_app:app``
(from the repository root). Every process that shares the broker shares the rooms:

* ``WS /rooms/{room}``: joins the room, sends ``{"type": "joined", "room": ...}`` once the
  join is done, then receives every message published to the room, from any process.
* ``POST /rooms/{room}/publish``: publishes the JSON body to the room; returns
  ``{"local": n}``, the number of this process's members it was queued for.
* ``WS /feed/{room}?since=<position>``: joins the room with envelopes, from the position
  if given; sends ``{"type": "joined", "recovered": ..., "reason": ..., "position": ...}``
  first, then every message of the room as ``{"group", "epoch", "offset", "data"}``.
* ``GET /health``: a readiness probe, ``{"broker_healthy": bool, "stats": {...}}``.
"""

from __future__ import annotations

from typing import Any

from nexios import NexiosApp, WebSocket
from nexios.http.request import Request

app = NexiosApp(title="cluster test app")  # broker: $NEXIOS_BROKER_URL


@app.ws_route("/rooms/{room}")
async def room(ws: WebSocket, room: str) -> None:
    await ws.accept()
    await ws.join(room)
    await ws.send_json({"type": "joined", "room": room})
    async for _ in ws.iter_text():  # keep the connection open until the client leaves
        pass


@app.ws_route("/feed/{room}")
async def feed(ws: WebSocket, room: str) -> None:
    await ws.accept()
    joined = await ws.join(room, since=ws.query_params.get("since"), envelope=True)
    await ws.send_json(
        {
            "type": "joined",
            "recovered": joined.recovered,
            "reason": joined.reason,
            "position": str(joined.position),
        }
    )
    async for _ in ws.iter_text():
        pass


@app.post("/rooms/{room}/publish")
async def publish(request: Request) -> dict[str, int]:
    payload: Any = await request.json()
    local = await app.channels.publish(request.path_params["room"], payload)
    return {"local": local}


@app.get("/health")
async def health(request: Request) -> dict[str, Any]:
    return {"broker_healthy": app.channels.healthy, "stats": app.channels.stats.as_dict()}
