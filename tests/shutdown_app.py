"""The app ``tests/test_shutdown.py`` runs as a real server process and stops with a signal.

Serve it with ``NEXIOS_SHUTDOWN_MARKER=/tmp/marker nexios run tests.shutdown_app:app``
(from the repository root). Every event worth checking after the process is gone is
appended, one line each, to the marker file (opened, written and closed at once, so
nothing is lost however the process ends), and printed as ``[shutdown_app] <line>`` for
a test that reads the server's output to wait for it:

* ``startup``: the ``on_startup`` hook ran; ``lifespan-enter``/``lifespan-exit``: the
  ``lifespan=`` context was entered and exited; ``shutdown-hook connections=N
  groups={...}``: the ``on_shutdown`` hook ran, with N handlers still running and the
  channel layer's groups.
* ``closed <route> <code>``: a connection's handler ended (its cleanup ran), and how its
  connection was closed;
* ``flood-stuck <bytes>``: a send of ``/flood`` has waited more than ``STUCK`` seconds.

Routes:

* ``WS /echo``: joins the group ``echo``, echoes every text message.
* ``WS /publish-loop``: publishes 1 KiB to the group ``loop`` in a loop that never
  ends by itself (``publishing``, once it started).
* ``WS /spin``: a handler that never yields to the event loop (``spinning``).
* ``WS /flood``: sends 64 KiB binary messages as fast as the client takes them, and says
  so (``flood-stuck``) once a send has waited ``STUCK`` seconds: the client does not
  read, its socket and uvicorn's write buffer are full.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from nexios import NexiosApp, WebSocket, WebSocketConfig
from nexios.exceptions import WebSocketDisconnect

MARKER = os.environ.get("NEXIOS_SHUTDOWN_MARKER", "")
CHUNK = b"\x00" * (64 * 1024)
# A send that has not completed after this long is waiting for a peer that does not read.
STUCK = 0.3


def mark(line: str) -> None:
    if MARKER:
        with Path(MARKER).open("a") as marker:
            marker.write(line + "\n")
    print(f"[shutdown_app] {line}", flush=True)


@contextlib.asynccontextmanager
async def lifespan(app: NexiosApp) -> AsyncIterator[dict[str, Any]]:
    mark("lifespan-enter")
    yield {"started": True}
    mark("lifespan-exit")


# No keepalive pings: a client that never reads must be released by the shutdown alone.
# $NEXIOS_SHUTDOWN_TIMEOUT: the drain (the tests of a bounded exit shorten it).
app = NexiosApp(
    title="shutdown test app",
    lifespan=lifespan,
    websocket_config=WebSocketConfig(
        ping_interval=None,
        shutdown_timeout=float(os.environ.get("NEXIOS_SHUTDOWN_TIMEOUT", "10")),
    ),
    broker="memory://shutdown-test-app",
)
stats: dict[str, int] = {"connections": 0, "flood_sent": 0}


@app.on_startup
def started() -> None:
    mark("startup")


@app.on_shutdown
async def stopping() -> None:
    # By now uvicorn has waited for every connection's handler to end.
    mark(f"shutdown-hook connections={stats['connections']} groups={app.channels.groups()}")


@app.ws_route("/echo")
async def echo(ws: WebSocket) -> None:
    await ws.accept()
    stats["connections"] += 1
    try:
        await ws.join("echo")
        async for text in ws.iter_text():
            await ws.send_text(text)
    finally:
        stats["connections"] -= 1
        mark(f"closed echo {ws.close_code}")


@app.ws_route("/publish-loop")
async def publish_loop(ws: WebSocket) -> None:
    await ws.accept()
    stats["connections"] += 1
    mark("publishing")
    try:
        while True:
            await app.channels.publish("loop", CHUNK[:1024])
    finally:
        stats["connections"] -= 1
        mark(f"closed publish-loop {ws.close_code}")


@app.ws_route("/spin")
async def spin(ws: WebSocket) -> None:
    await ws.accept()
    mark("spinning")
    while True:  # never yields: nothing in the event loop runs again
        pass


@app.ws_route("/flood")
async def flood(ws: WebSocket) -> None:
    await ws.accept()
    stats["connections"] += 1
    stuck = False
    try:
        while True:
            send = asyncio.ensure_future(ws.send_bytes(CHUNK))
            done, _ = await asyncio.wait({send}, timeout=STUCK)
            if not done and not stuck:
                stuck = True
                mark(f"flood-stuck {stats['flood_sent']}")
            await send
            stats["flood_sent"] += len(CHUNK)
    except WebSocketDisconnect:
        pass
    finally:
        stats["connections"] -= 1
        mark(f"closed flood {ws.close_code}")
