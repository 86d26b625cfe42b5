"""Hostile clients before the request head is complete (issue 17): slowloris, huge heads.

Every test runs a real server: in this process (``live_server``) with raw asyncio sockets
as the hostile clients, or, where the figure is the server's memory or its open-file
limit, in a process of its own (``tests/hardening_app.py``) whose RSS is read from
``/proc/<pid>/status``. Times are measured, never slept: a client waits for the server's
answer (or its close) with a generous deadline, and the test checks the figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from _servers import free_port
from hardening_app import build
from nexios import WebSocketConfig

ROOT = Path(__file__).resolve().parent.parent
APP = Path(__file__).resolve().parent / "hardening_app.py"
# How long a client waits for an answer or a close before the test calls it "never".
PATIENCE = 8.0
# "At once": an answer well under the handshake timeout (10 s by default).
AT_ONCE = 2.5

UPGRADE = (
    b"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)
PARTIAL_UPGRADE = b"GET /ws HTTP/1.1\r\n" + UPGRADE  # no final empty line: never finished

HTTP_IMPLEMENTATIONS = ["httptools", "h11"]


# Clients


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = PATIENCE) -> bytes:
    """Everything the server sends until it closes; TimeoutError if it does not close."""
    data = bytearray()
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return bytes(data)


def status_of(response: bytes) -> int | None:
    if not response.startswith(b"HTTP/1.1 "):
        return None
    return int(response[9:12])


async def send_whole(port: int, request: bytes) -> tuple[int | None, float, bytes]:
    """Send *request* at once; (status, seconds to the answer and close, response)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(request)
            await writer.drain()
        try:
            response = await read_until_closed(reader)
        except TimeoutError:
            return None, time.monotonic() - started, b""
        return status_of(response), time.monotonic() - started, response
    finally:
        writer.close()


async def stream_head(
    port: int, start: bytes, filler: bytes, budget: int
) -> tuple[int | None, float, int]:
    """Send *start*, then *filler* again and again (*budget* bytes at most) without ever
    finishing the head, while reading. (status, seconds to the answer, bytes sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    sent = 0
    answered = asyncio.create_task(reader.read(65536))
    try:
        writer.write(start)
        while sent < budget and not answered.done():
            writer.write(filler)
            sent += len(filler)
            try:
                await writer.drain()
            except ConnectionError:
                break
        try:
            first = await asyncio.wait_for(answered, PATIENCE)
        except (TimeoutError, ConnectionError):
            return None, time.monotonic() - started, sent
        return status_of(first), time.monotonic() - started, sent
    finally:
        answered.cancel()
        writer.close()


# Servers


@contextlib.asynccontextmanager
async def app_process(
    http: str, config: dict[str, Any], nofile: int | None = None
) -> AsyncIterator[tuple[int, asyncio.subprocess.Process, Path]]:
    """``tests/hardening_app.py`` in a process of its own: (port, process, log path)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NEXIOS_TEST_CONFIG": json.dumps(config)}
    if nofile is not None:
        env["NEXIOS_TEST_NOFILE"] = str(nofile)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    log_path = (
        Path(os.environ.get("TMPDIR", "/tmp"))
        / f"hardening-{os.getpid()}-{time.monotonic_ns()}.log"
    )
    port = free_port()
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(APP),
            str(port),
            http,
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.returncode is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start:\n{log_path.read_text()}", pytrace=False)
            with contextlib.suppress(OSError):
                status, _, _ = await send_whole(
                    port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                if status == 200:
                    break
            await asyncio.sleep(0.05)
        yield port, process, log_path
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        with contextlib.suppress(OSError):
            log_path.unlink()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Records(logging.Handler):
    """The records of one logger that contain *text*, with an event per new record."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.records: list[logging.LogRecord] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.records.append(record)
            self.changed.set()

    def count(self, level: int) -> int:
        return sum(1 for record in self.records if record.levelno == level)

    async def wait_for(self, level: int, timeout: float = PATIENCE) -> logging.LogRecord:
        async with asyncio.timeout(timeout):
            while True:
                for record in self.records:
                    if record.levelno == level:
                        return record
                self.changed.clear()
                await self.changed.wait()


@contextlib.contextmanager
def server_log() -> Iterator[Records]:
    """What uvicorn's logger says of closes before the head, while the block runs.
    Attached once the server started: its logging configuration replaces handlers."""
    records = Records("before their request head")
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(records)
    try:
        yield records
    finally:
        logger.removeHandler(records)


async def stats(port: int) -> dict[str, Any]:
    status, _, response = await send_whole(
        port, b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 200, response
    body = response.split(b"\r\n\r\n", 1)[1]
    return json.loads(body) if body else {}


# Slowloris


@pytest.mark.parametrize("http", HTTP_IMPLEMENTATIONS)
async def test_slowloris_connections_are_closed_after_the_handshake_timeout(
    live_server: Any, http: str
) -> None:
    """300 unfinished upgrade requests and 100 silent sockets: all closed once
    ``handshake_timeout`` (0.5 s) has passed, 408 for those that sent something; one
    WARNING when it starts and one INFO when it is over, with the counts."""
    app = build(WebSocketConfig(handshake_timeout=0.5))
    async with live_server(app, http=http, log_level="info") as server:
        with server_log() as log:
            sockets = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(400)]
            started = time.monotonic()
            for _, writer in sockets[:300]:
                writer.write(PARTIAL_UPGRADE)

            async def closed(reader: asyncio.StreamReader) -> tuple[bytes | None, float]:
                try:
                    response = await read_until_closed(reader)
                except TimeoutError:
                    return None, PATIENCE
                return response, time.monotonic() - started

            results = await asyncio.gather(*(closed(reader) for reader, _ in sockets))
            for _, writer in sockets:
                writer.close()
            still_open = sum(1 for response, _ in results if response is None)
            slowest = max(seconds for _, seconds in results)
            assert still_open == 0, f"{still_open} of 400 still open after {PATIENCE} s"
            assert slowest < 0.5 + AT_ONCE, f"the last one closed after {slowest:.2f} s"
            assert all(status_of(response or b"") == 408 for response, _ in results[:300])
            assert all(response == b"" for response, _ in results[300:])
            warning = await log.wait_for(logging.WARNING)
            assert "handshake_timeout" in warning.getMessage()
            summary = await log.wait_for(logging.INFO)
            assert "400" in summary.getMessage()
            assert log.count(logging.WARNING) == 1
            counters = await stats(server.port)
            assert counters["timed_out"] == 400
            assert counters["half_open"] == 0
    assert server.errors == []


@pytest.mark.parametrize("http", HTTP_IMPLEMENTATIONS)
async def test_a_keep_alive_request_started_but_not_finished_times_out(
    live_server: Any, http: str
) -> None:
    """The timer starts again with each request on a keep-alive connection."""
    app = build(WebSocketConfig(handshake_timeout=0.5))
    async with live_server(app, http=http) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            first = await asyncio.wait_for(reader.readuntil(b"ok"), PATIENCE)
            assert status_of(first) == 200
            writer.write(b"GET /health HTTP/1.1\r\nHo")
            started = time.monotonic()
            try:
                second = await read_until_closed(reader)
            except TimeoutError:
                pytest.fail(f"the unfinished second request was held {PATIENCE} s")
            seconds = time.monotonic() - started
            assert status_of(second) == 408
            assert 0.3 < seconds < 0.5 + AT_ONCE, seconds
        finally:
            writer.close()


async def test_half_open_connections_count_toward_max_connections(live_server: Any) -> None:
    """max_connections=3: with 2 unfinished handshakes held, one WebSocket gets in and the
    next is refused with 503."""
    app = build(WebSocketConfig(max_connections=3))
    async with live_server(app) as server:
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        try:
            for _, writer in held:
                writer.write(PARTIAL_UPGRADE)
            async with asyncio.timeout(PATIENCE):
                # The server has read both partial heads once /stats (after them) sees them.
                while (await stats(server.port)).get("half_open") != 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            url = server.ws + "/ws"
            async with connect(url, open_timeout=PATIENCE) as ws:
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(url, open_timeout=PATIENCE):
                        pass
                assert refused.value.response.status_code == 503
                await ws.send("still here")
                assert await asyncio.wait_for(ws.recv(), PATIENCE) == "still here"
        finally:
            for _, writer in held:
                writer.close()


async def test_a_prompt_client_gets_in_while_slowloris_holds_many_sockets() -> None:
    """A server allowed 200 open files, ``max_half_open=50``: 400 slowloris sockets are
    opened, then a real client connects and echoes at once (the oldest half-open
    connections make room), and the server logs the burst once."""
    config = {"max_half_open": 50}
    async with app_process("httptools", config, nofile=200) as (port, _, log_path):
        attackers = []
        for _ in range(400):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(PARTIAL_UPGRADE)
            attackers.append((reader, writer))
        try:
            started = time.monotonic()
            try:
                async with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=PATIENCE) as ws:
                    await ws.send("hello")
                    assert await asyncio.wait_for(ws.recv(), PATIENCE) == "hello"
            except TimeoutError:
                pytest.fail(f"the real client could not connect in {PATIENCE} s")
            seconds = time.monotonic() - started
            assert seconds < AT_ONCE, seconds
            closed = 0
            for reader, _ in attackers:
                if reader.at_eof():
                    closed += 1
            counters = await stats(port)
            assert counters["half_open"] <= 50
            assert counters["evicted"] >= 300
        finally:
            for _, writer in attackers:
                writer.close()
        log = log_path.read_text()
        assert log.count("WARNING:  Closing connections before") == 1, log[-3000:]
        assert "max_half_open=50" in log


# Unfinished heads that grow without bound


@pytest.mark.parametrize("http", HTTP_IMPLEMENTATIONS)
async def test_an_unfinished_head_of_many_short_headers_is_refused_at_once(http: str) -> None:
    """5 clients each stream 2 MB of short header lines and never finish: each gets 431
    at once and the server's memory grows by less than 16 MiB."""
    async with app_process(http, {}) as (port, process, _):
        before = rss_kib(process.pid)
        results = await asyncio.gather(
            *(stream_head(port, PARTIAL_UPGRADE, b"x-a: b\r\n" * 8192, 2_000_000) for _ in range(5))
        )
        grown = (rss_kib(process.pid) - before) / 1024
        assert [status for status, _, _ in results] == [431] * 5, (results, grown)
        assert max(seconds for _, seconds, _ in results) < AT_ONCE, results
        assert grown < 16, f"server RSS grew by {grown:.1f} MiB"


@pytest.mark.parametrize("http", HTTP_IMPLEMENTATIONS)
async def test_one_huge_unfinished_header_line_is_refused_at_once(http: str) -> None:
    """One client streams a 16 MiB header line: 431 at once, server RSS +16 MiB at most."""
    async with app_process(http, {}) as (port, process, _):
        before = rss_kib(process.pid)
        status, seconds, sent = await stream_head(
            port, PARTIAL_UPGRADE + b"x-big: ", b"a" * 65536, 16 << 20
        )
        grown = (rss_kib(process.pid) - before) / 1024
        assert status == 431, (status, seconds, sent, grown)
        assert seconds < AT_ONCE, seconds
        assert grown < 16, f"server RSS grew by {grown:.1f} MiB"


# Finished heads over the limits


def many_headers(n: int, size: int = 12) -> bytes:
    value = b"v" * (size - len(b"x-f0000: \r\n"))
    return b"".join(b"x-f%04d: %s\r\n" % (i, value) for i in range(n))


OVER_THE_LIMITS = {
    # name: (request, status)
    "upgrade, a 9 KB header line": (PARTIAL_UPGRADE + b"x-long: " + b"a" * 9000 + b"\r\n\r\n", 431),
    "GET, a 9 KB header line": (
        b"GET /health HTTP/1.1\r\nHost: x\r\nx-long: " + b"a" * 9000 + b"\r\n\r\n",
        431,
    ),
    "upgrade, 129 headers": (PARTIAL_UPGRADE + many_headers(129 - 5) + b"\r\n", 431),
    "GET, 129 headers": (b"GET /health HTTP/1.1\r\nHost: x\r\n" + many_headers(128) + b"\r\n", 431),
    "GET, 70 KB of headers": (
        b"GET /health HTTP/1.1\r\nHost: x\r\n" + many_headers(100, 700) + b"\r\n",
        431,
    ),
    "upgrade, a 100 KB path": (
        b"GET /ws" + b"a" * 100_000 + b" HTTP/1.1\r\n" + UPGRADE + b"\r\n",
        414,
    ),
    "GET, a 0.9 MB query": (
        b"GET /health?q=" + b"a" * 900_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        414,
    ),
}


@pytest.mark.parametrize("http", HTTP_IMPLEMENTATIONS)
@pytest.mark.parametrize("case", list(OVER_THE_LIMITS))
async def test_a_finished_head_over_a_limit_is_answered_at_once(
    live_server: Any, http: str, case: str
) -> None:
    request, expected = OVER_THE_LIMITS[case]
    async with live_server(build(WebSocketConfig()), http=http) as server:
        status, seconds, response = await send_whole(server.port, request)
        assert status == expected, (status, seconds, response[:200])
        assert seconds < AT_ONCE, seconds
        # The server goes on.
        status, _, _ = await send_whole(
            server.port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert status == 200


@pytest.mark.parametrize("http", HTTP_IMPLEMENTATIONS)
async def test_an_upgrade_at_every_limit_passes_the_websocket_handshake(
    live_server: Any, http: str
) -> None:
    """An 8,192-byte request line, an 8,192-byte header line and 128 headers: the limits
    let through what websockets' parser accepts after uvicorn rebuilds the request."""
    line = b"GET /ws?q=" + b"a" * (8192 - len(b"GET /ws?q= HTTP/1.1\r\n")) + b" HTTP/1.1\r\n"
    assert len(line) == 8192
    big = b"x-big: " + b"b" * (8192 - len(b"x-big: \r\n")) + b"\r\n"
    assert len(big) == 8192
    request = line + UPGRADE + big + many_headers(128 - 6) + b"\r\n"
    async with live_server(build(WebSocketConfig()), http=http) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
            assert status_of(head) == 101, head
        finally:
            writer.close()


@pytest.mark.parametrize("http", HTTP_IMPLEMENTATIONS)
async def test_each_request_of_a_keep_alive_connection_has_its_own_limits(
    live_server: Any, http: str
) -> None:
    """Ten requests of 100 headers (50 KB) each, pipelined in one write: all 200."""
    one = b"GET /health HTTP/1.1\r\nHost: x\r\n" + many_headers(100, 500) + b"\r\n"
    async with live_server(build(WebSocketConfig()), http=http) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(one * 9 + one.replace(b"Host: x", b"Host: x\r\nConnection: close"))
            response = await read_until_closed(reader)
        finally:
            writer.close()
        assert response.count(b"HTTP/1.1 200 OK") == 10, response[-300:]


def test_max_half_open_is_checked_and_reaches_the_server() -> None:
    with pytest.raises(ValueError, match="max_half_open must be at least 1"):
        WebSocketConfig(max_half_open=0)
    assert WebSocketConfig(max_half_open=7).server_limits().max_half_open == 7
