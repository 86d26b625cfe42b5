"""A stand-in for a connection as the channels hold it (``nexios.channels.registry.Sink``).

`FakeSink` has a socket with room for ``room`` messages: ``send_nowait`` writes while
there is room and refuses (returns False) when it is full, as nexios' server does when
the socket's buffer is full; ``send`` waits for room. The test plays the client:
`read` takes messages out (making room), `stall` stops it reading. Every wait is on an
event with a timeout; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import orjson

from nexios.types import Message

TIMEOUT = 10.0


class Gone(ConnectionError):
    """What a send raises once the peer is gone (like uvicorn's ClientDisconnected)."""


class FakeSink:
    def __init__(self, name: str, room: int = 1_000_000, *, nowait: bool = True) -> None:
        self.id = name
        self.room = room  # messages the socket holds before it is full
        self.buffer: deque[Message] = deque()  # written, not yet read by the client
        self.received: list[Message] = []  # read by the client, in order
        self.frames = 0  # messages written with a prebuilt frame
        self.nowait = nowait  # False: a server without the send_nowait extension
        self.gone = False
        self.closed: tuple[int, str | None] | None = None
        self._changed = asyncio.Event()
        self.auto = True  # the client reads everything as soon as it is written

    # The Sink protocol.

    def send_nowait(self, message: Message, frame: bytes | None = None) -> bool:
        if not self.nowait or self.gone or self.closed or len(self.buffer) >= self.room:
            return False
        if frame is not None:
            self.frames += 1
        self._write(message)
        return True

    async def send(self, message: Message) -> None:
        while True:
            if self.gone or self.closed:
                raise Gone(f"{self.id} is gone")
            if len(self.buffer) < self.room:
                self._write(message)
                await asyncio.sleep(0)  # a real send lets the loop run now and then
                return
            self._changed.clear()
            await self._changed.wait()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = (code, reason)
        self._changed.set()

    # The client.

    def _write(self, message: Message) -> None:
        self.buffer.append(message)
        if self.auto:
            self._drain()
        self._changed.set()

    def _drain(self, count: int | None = None) -> None:
        n = len(self.buffer) if count is None else min(count, len(self.buffer))
        for _ in range(n):
            self.received.append(self.buffer.popleft())
        self._changed.set()

    def stall(self) -> None:
        """The client stops reading: the socket fills up to ``room``."""
        self.auto = False

    def resume(self) -> None:
        """The client reads everything from now on."""
        self.auto = True
        self._drain()

    def read(self, count: int | None = None) -> None:
        """The client reads ``count`` messages (all that wait with None)."""
        self._drain(count)

    def disconnect(self) -> None:
        self.gone = True
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = TIMEOUT) -> list[Any]:
        """Wait until the client has read ``count`` messages; their payloads."""
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.payloads()

    async def wait_until(self, condition: Any, timeout: float = TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self._changed.wait()

    def payloads(self) -> list[Any]:
        out: list[Any] = []
        for message in self.received:
            text = message.get("text")
            if text is None:
                out.append(message.get("bytes"))
                continue
            try:
                out.append(orjson.loads(text))
            except orjson.JSONDecodeError:
                out.append(text)
        return out

    def __repr__(self) -> str:
        return f"<FakeSink {self.id} read={len(self.received)} buffered={len(self.buffer)}>"
