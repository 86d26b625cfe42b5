"""This project's nexios: ``ws.join`` and ``app.channels.publish`` (encode once, group logs).

The broker is ``$NEXIOS_BROKER_URL`` (the cross-process workload sets Redis), else memory.
"""

from __future__ import annotations

import os

from nexios import NexiosApp, WebSocket

GROUP = os.environ.get("BENCH_GROUP", "fan")
FLOOD_GROUP = GROUP + ".flood"
FILL = b"\0" * (1 << 20)
FILL_COUNT = 16

app = NexiosApp()


def payload(seq: int) -> str:
    return f"{seq:08d}" + "." * 56


@app.ws_route("/ws/echo")
async def echo(ws: WebSocket) -> None:
    await ws.accept()
    async for text in ws.iter_text():
        await ws.send_text(text)


@app.ws_route("/ws/fan")
async def member(ws: WebSocket) -> None:
    await ws.accept()
    await ws.join(GROUP)
    async for text in ws.iter_text():
        if text == "fill":
            for _ in range(FILL_COUNT):
                await ws.send_bytes(FILL)


@app.ws_route("/ws/flood")
async def flood_member(ws: WebSocket) -> None:
    await ws.accept()
    await ws.join(FLOOD_GROUP)
    async for _ in ws.iter_bytes():
        pass


async def flood(ws: WebSocket, first: int, count: int, size: int) -> None:
    """``count`` binary messages to the flood group, ``app.channels.publish`` each; the
    answer carries what the layer counted: members closed or skipped past, publishes
    paced, and the position of the last message."""
    body = b"." * (size - 8)
    sent = None
    for seq in range(first, first + count):
        sent = await app.channels.publish(FLOOD_GROUP, seq.to_bytes(8, "big") + body)
    stats = app.channels.stats
    await ws.send_text(
        f"done closed_slow={stats.closed_slow} skipped={stats.skipped} paced={stats.paced} "
        f"slow={stats.slow} position={sent.position if sent is not None else None}"
    )


@app.ws_route("/ws/resume")
async def resume(ws: WebSocket) -> None:
    """Joins the flood group from ``?since=<position>``: the resume-cost benchmark
    (bench/resume.py) times how long the replay takes."""
    await ws.accept()
    joined = await ws.join(FLOOD_GROUP, since=ws.query_params["since"])
    if not joined.recovered:
        await ws.close(4000, f"not recovered: {joined.reason}")
        return
    async for _ in ws.iter_bytes():
        pass


@app.ws_route("/ws/control")
async def control(ws: WebSocket) -> None:
    await ws.accept()
    async for text in ws.iter_text():
        if text.startswith("f "):
            await flood(ws, *map(int, text[2:].split()))
            continue
        await app.channels.publish(GROUP, payload(int(text[2:])))
