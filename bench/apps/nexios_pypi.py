"""The published ``nexios`` (PyPI, 3.12.x): its ``ChannelBox`` groups and ``group_send``."""

from __future__ import annotations

import os

from nexios import NexiosApp
from nexios.websockets import WebSocket
from nexios.websockets.channels import Channel, ChannelBox

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
    channel = Channel(websocket=ws, payload_type="text")
    await ChannelBox.add_channel_to_group(channel, group_name=GROUP)
    try:
        async for text in ws.iter_text():
            if text == "fill":
                for _ in range(FILL_COUNT):
                    await ws.send_bytes(FILL)
    finally:
        await ChannelBox.remove_channel_from_group(channel, GROUP)


@app.ws_route("/ws/flood")
async def flood_member(ws: WebSocket) -> None:
    await ws.accept()
    channel = Channel(websocket=ws, payload_type="bytes")
    await ChannelBox.add_channel_to_group(channel, group_name=FLOOD_GROUP)
    try:
        async for _ in ws.iter_bytes():
            pass
    finally:
        await ChannelBox.remove_channel_from_group(channel, FLOOD_GROUP)


async def flood(ws: WebSocket, first: int, count: int, size: int) -> None:
    """``count`` binary messages to the flood group, ``ChannelBox.group_send`` each."""
    body = b"." * (size - 8)
    for seq in range(first, first + count):
        await ChannelBox.group_send(group_name=FLOOD_GROUP, payload=seq.to_bytes(8, "big") + body)
    await ws.send_text("done")


@app.ws_route("/ws/control")
async def control(ws: WebSocket) -> None:
    await ws.accept()
    async for text in ws.iter_text():
        if text.startswith("f "):
            await flood(ws, *map(int, text[2:].split()))
            continue
        await ChannelBox.group_send(group_name=GROUP, payload=payload(int(text[2:])))
