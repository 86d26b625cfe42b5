"""This project's nexios: ``ws.join`` and ``app.channels.publish`` (encode once, outboxes).

The broker is ``$NEXIOS_BROKER_URL`` (the cross-process workload sets Redis), else memory.
"""

from __future__ import annotations

import os

from nexios import NexiosApp, WebSocket

GROUP = os.environ.get("BENCH_GROUP", "fan")
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


@app.ws_route("/ws/control")
async def control(ws: WebSocket) -> None:
    await ws.accept()
    async for text in ws.iter_text():
        await app.channels.publish(GROUP, payload(int(text[2:])))
