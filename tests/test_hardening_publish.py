"""Hardening of publish (issue 17) on real servers: a handler that publishes in a loop
does not freeze the server, and a hung Redis neither slows publishers down nor makes
the counters lie.

Every test runs ``nexios run tests.publish_app:app`` processes (``_servers.AppServer``)
and measures what a user would notice: how long an HTTP request and a WebSocket echo
wait while a handler publishes, how soon SIGTERM ends the process, how long each
``publish`` takes while Redis is stopped (SIGSTOP), and whether the counters add up to
what the clients received. Waits are bounded; nothing relies on a sleep.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from _servers import AppServer

APP = "tests.publish_app:app"
DEADLINE = 10.0  # any wait for something that must happen
RESPONSIVE = 0.5  # an HTTP request or a WebSocket echo answers within this during a flood
MEMBERS = 200
FLOOD_SIZE = 1024


class RawMember:
    """A WebSocket member of ``fan`` on a bare socket: it reads as fast as the kernel
    gives it bytes and counts them, without parsing frames (a test client that parses
    200 connections' worth of frames would need more CPU than the server)."""

    def __init__(self) -> None:
        self.received = 0
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    async def open(self, port: int) -> None:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write(
            (
                f"GET /member HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(1 << 16):
                self.received += len(data)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


@dataclass
class Flooded:
    server: AppServer
    http: httpx.AsyncClient
    members: list[RawMember] = field(default_factory=list)


@pytest.fixture
async def flooded(tmp_path: Path) -> AsyncIterator[Flooded]:
    """One server on memory:// with MEMBERS raw members in ``fan``."""
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient())
        server = AppServer("flood", APP, tmp_path, {"NEXIOS_BROKER_URL": "memory://"})
        stack.push_async_callback(server.stop)
        await server.start(http)
        setup = Flooded(server, http)
        for _ in range(MEMBERS):
            member = RawMember()
            stack.push_async_callback(member.close)
            await member.open(server.port)
            setup.members.append(member)
        await wait_for(lambda: members_joined(setup), f"{MEMBERS} members in fan", server.log)
        try:
            yield setup
        finally:
            print(f"\n----- server output -----\n{server.log()}")


async def members_joined(setup: Flooded) -> bool:
    health = await setup.server.health(setup.http)
    return bool(health["members"] == MEMBERS)


async def wait_for(condition: Any, what: str, log: Any = None) -> float:
    """Poll *condition* (sync or async) every 20 ms up to DEADLINE; seconds it took."""
    started = time.monotonic()
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > DEADLINE:
            pytest.fail(f"Not {what} after {DEADLINE} s.\n{log() if log else ''}", pytrace=False)
        await asyncio.sleep(0.02)


async def start_flood(server: AppServer, count: int) -> ClientConnection:
    control = await connect(f"{server.ws}/flood", open_timeout=DEADLINE, close_timeout=2)
    await control.send(f"{count} {FLOOD_SIZE}")
    assert await asyncio.wait_for(control.recv(), DEADLINE) == "started"
    return control


# 1. A handler publishing in a loop on memory:// leaves the server responsive.


async def test_a_publishing_loop_leaves_http_and_websockets_responsive(
    flooded: Flooded,
) -> None:
    server, http = flooded.server, flooded.http
    count = 3000  # x 1 KiB to 200 members: 600 MB, seconds of server CPU
    async with connect(f"{server.ws}/echo", open_timeout=DEADLINE, close_timeout=2) as echo:
        control = await start_flood(server, count)
        done = asyncio.create_task(control.recv())
        http_waits: list[float] = []
        echo_waits: list[float] = []
        try:
            # Sample while the loop runs: each sample starts before "done" arrived.
            while not done.done() and len(http_waits) < 50:
                started = time.perf_counter()
                response = await http.get(server.http + "/health", timeout=120)
                http_waits.append(time.perf_counter() - started)
                assert response.status_code == 200
                if done.done():
                    break
                started = time.perf_counter()
                await echo.send("ping")
                assert await asyncio.wait_for(echo.recv(), 120) == "ping"
                echo_waits.append(time.perf_counter() - started)
            finished = await asyncio.wait_for(done, 120)
        finally:
            done.cancel()
            await control.close()
    took = float(str(finished).split()[1])
    stats = (await server.health(http))["stats"]
    print(
        f"\nloop of {count} publishes: {took:.2f} s; GET /health waited max "
        f"{max(http_waits):.3f} s over {len(http_waits)} samples; echo waited max "
        f"{max(echo_waits, default=0):.3f} s over {len(echo_waits)}; stats {stats}; "
        f"members received {min(m.received for m in flooded.members)}.."
        f"{max(m.received for m in flooded.members)} bytes"
    )
    assert stats["published"] == count
    assert max(http_waits) < RESPONSIVE, f"GET /health waited {max(http_waits):.2f} s"
    assert echo_waits, "no echo round trip while the loop ran"
    assert max(echo_waits) < RESPONSIVE, f"the echo waited {max(echo_waits):.2f} s"


SIGTERM_EXIT = 5.0  # the process exits this soon after SIGTERM, mid-loop


async def test_sigterm_during_a_publishing_loop_ends_the_process(flooded: Flooded) -> None:
    server = flooded.server
    control = await start_flood(server, 20_000)  # far longer than the test, unchecked
    try:
        process = server.process
        assert process is not None
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), SIGTERM_EXIT)
        except TimeoutError:
            pytest.fail(f"No exit {SIGTERM_EXIT} s after SIGTERM.\n{server.log()}")
        took = time.monotonic() - started
    finally:
        with contextlib.suppress(Exception):
            await control.close()
    print(f"\nexited {took:.2f} s after SIGTERM, mid-loop (exit status {process.returncode})")
    # uvicorn shuts down gracefully, then raises the signal again.
    assert process.returncode in (0, -signal.SIGTERM), server.log()
    assert "Finished server process" in server.log(), server.log()
