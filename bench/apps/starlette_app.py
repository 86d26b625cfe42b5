"""Starlette: ``WebSocketRoute`` endpoints, a set of members and a loop of ``send_text``."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

FILL = b"\0" * (1 << 20)
FILL_COUNT = 16

members: set[WebSocket] = set()


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


async def control(ws: WebSocket) -> None:
    await ws.accept()
    async for text in ws.iter_text():
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
        WebSocketRoute("/ws/control", control),
    ]
)
