"""Starlette: ``WebSocketRoute`` endpoints, a set of members and a loop of ``send_text``."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

FILL = b"\0" * (1 << 20)
FILL_COUNT = 16

members: set[WebSocket] = set()
flood_members: set[WebSocket] = set()


def payload(seq: int) -> str:
    return f"{seq:08d}" + "." * 56


async def echo(ws: WebSocket) -> None:
    await ws.accept()
    async for text in ws.iter_text():
        await ws.send_text(text)


async def member(ws: WebSocket) -> None:
    await ws.accept()
    members.add(ws)
    try:
        async for text in ws.iter_text():
            if text == "fill":
                for _ in range(FILL_COUNT):
                    await ws.send_bytes(FILL)
    finally:
        members.discard(ws)


async def flood_member(ws: WebSocket) -> None:
    await ws.accept()
    flood_members.add(ws)
    try:
        async for _ in ws.iter_bytes():
            pass
    finally:
        flood_members.discard(ws)


async def flood(ws: WebSocket, first: int, count: int, size: int) -> None:
    """``count`` binary messages to every flood member, each ``send_bytes`` awaited."""
    body = b"." * (size - 8)
    for seq in range(first, first + count):
        data = seq.to_bytes(8, "big") + body
        for other in list(flood_members):
            try:
                await other.send_bytes(data)
            except Exception:  # gone: drop it, the others go on
                flood_members.discard(other)
    await ws.send_text("done")


async def control(ws: WebSocket) -> None:
    await ws.accept()
    async for text in ws.iter_text():
        if text.startswith("f "):
            await flood(ws, *map(int, text[2:].split()))
            continue
        message = payload(int(text[2:]))
        for other in list(members):
            try:
                await other.send_text(message)
            except Exception:  # gone: drop it, the others go on
                members.discard(other)


app = Starlette(
    routes=[
        WebSocketRoute("/ws/echo", echo),
        WebSocketRoute("/ws/fan", member),
        WebSocketRoute("/ws/flood", flood_member),
        WebSocketRoute("/ws/control", control),
    ]
)
