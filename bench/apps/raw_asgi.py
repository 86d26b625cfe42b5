"""A raw ASGI app, no framework: a set of ``send`` callables and a loop of ``await send``."""

from __future__ import annotations

from typing import Any

FILL = {"type": "websocket.send", "bytes": b"\0" * (1 << 20)}
FILL_COUNT = 16  # 16 MiB: more than the kernel and transport buffers hold

members: set[Any] = set()
flood_members: set[Any] = set()


def payload(seq: int) -> str:
    return f"{seq:08d}" + "." * 56


async def echo(receive: Any, send: Any) -> None:
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        await send({"type": "websocket.send", "text": message["text"]})


async def member(receive: Any, send: Any) -> None:
    await send({"type": "websocket.accept"})
    members.add(send)
    try:
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            if message.get("text") == "fill":
                for _ in range(FILL_COUNT):
                    await send(FILL)
    finally:
        members.discard(send)


async def flood_member(receive: Any, send: Any) -> None:
    await send({"type": "websocket.accept"})
    flood_members.add(send)
    try:
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
    finally:
        flood_members.discard(send)


async def flood(send: Any, first: int, count: int, size: int) -> None:
    """``count`` binary messages to every flood member, one after the other, each
    awaited (the loop goes only as fast as the slowest member's socket takes them)."""
    body = b"." * (size - 8)
    for seq in range(first, first + count):
        out = {"type": "websocket.send", "bytes": seq.to_bytes(8, "big") + body}
        for member_send in list(flood_members):
            try:
                await member_send(out)
            except Exception:  # gone: drop it, the others go on
                flood_members.discard(member_send)
    await send({"type": "websocket.send", "text": "done"})


async def control(receive: Any, send: Any) -> None:
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        if message["text"].startswith("f "):
            await flood(send, *map(int, message["text"][2:].split()))
            continue
        out = {"type": "websocket.send", "text": payload(int(message["text"][2:]))}
        for member_send in list(members):
            try:
                await member_send(out)
            except Exception:  # gone: drop it, the others go on
                members.discard(member_send)


ROUTES = {
    "/ws/echo": echo,
    "/ws/fan": member,
    "/ws/flood": flood_member,
    "/ws/control": control,
}


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        handler = ROUTES.get(scope["path"])
        if handler is None:
            await send({"type": "websocket.close", "code": 1008})
            return
        await handler(receive, send)
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
