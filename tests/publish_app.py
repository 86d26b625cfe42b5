"""The app ``tests/test_hardening_publish.py`` runs as real server processes: a handler
that publishes in a loop, members that receive, and routes that must keep answering.

Serve it with ``nexios run tests.publish_app:app`` (from the repository root); the
broker is ``$NEXIOS_BROKER_URL`` (default ``memory://``).

* ``WS /member``: joins the group ``fan``, sends ``{"type": "joined"}``, then receives
  every message published to ``fan``;
* ``WS /echo``: echoes every text message;
* ``WS /flood``: for each text ``"<count> <size>"`` it receives, sends ``started``,
  publishes ``count`` text messages of ``size`` bytes to ``fan`` in a loop (``await
  app.channels.publish``), then sends ``done <seconds>``;
* ``POST /publish/{group}``: publishes the JSON body to the group; answers
  ``{"local": n, "took": seconds, "outcome": counter}``: how long ``publish`` took,
  measured in the handler, and which counter of ``app.channels.stats`` it moved (what
  became of the message for the other processes; the test publishes one at a time per
  server, so that this is exact);
* ``GET /health``: ``{"broker_healthy", "members", "stats"}``.
"""

from __future__ import annotations

import time
from typing import Any

from nexios import NexiosApp, WebSocket
from nexios.http.request import Request

app = NexiosApp(title="publish hardening test app")


@app.ws_route("/member")
async def member(ws: WebSocket) -> None:
    await ws.accept()
    await ws.join("fan")
    await ws.send_json({"type": "joined"})
    async for _ in ws.iter_text():
        pass


@app.ws_route("/echo")
async def echo(ws: WebSocket) -> None:
    await ws.accept()
    async for text in ws.iter_text():
        await ws.send_text(text)


@app.ws_route("/flood")
async def flood(ws: WebSocket) -> None:
    await ws.accept()
    async for text in ws.iter_text():
        count, size = (int(word) for word in text.split())
        payload = "x" * size
        await ws.send_text("started")
        started = time.perf_counter()
        for _ in range(count):
            await app.channels.publish("fan", payload)
        await ws.send_text(f"done {time.perf_counter() - started:.3f}")


# Which counter a publish moved: what became of the message for the other processes.
OUTCOMES = ("publish_refused", "publish_failed", "publish_unknown", "published_remote")


@app.post("/publish/{group}")
async def publish(request: Request) -> dict[str, Any]:
    payload: Any = await request.json()
    before = app.channels.stats.as_dict()
    started = time.perf_counter()
    local = await app.channels.publish(request.path_params["group"], payload)
    took = time.perf_counter() - started
    after = app.channels.stats.as_dict()
    moved = [name for name in OUTCOMES if after.get(name) != before.get(name)]
    return {"local": local, "took": took, "outcome": moved[0] if moved else None}


@app.get("/health")
async def health(request: Request) -> dict[str, Any]:
    return {
        "broker_healthy": app.channels.healthy,
        "members": len(app.channels.members("fan")),
        "stats": app.channels.stats.as_dict(),
    }
