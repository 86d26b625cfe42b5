"""A redis-server of a test's own: on a free port, in the test's temporary folder, that the
test can kill, start again on the same port, or pause (``SIGSTOP``).

``private_redis`` (a fixture in conftest.py) gives one to a test; `require_redis_server`
skips a test when ``redis-server`` is not on PATH, and fails it in CI (``CI=true``).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from _servers import free_port, in_ci

# How long a started redis-server may take to answer PING.
START_TIMEOUT = 5.0


def require_redis_server() -> None:
    """Skip the test without ``redis-server`` on PATH (fail it in CI)."""
    if shutil.which("redis-server") is None:
        reason = "redis-server is not on PATH (apt-get install redis-server)"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


class PrivateRedis:
    """A redis-server of the test's own, killed and started again on the same port."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Run redis-server; return once it answers PING."""
        self.process = await asyncio.create_subprocess_exec(
            "redis-server",
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=0.2, socket_timeout=0.2)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        try:
            while True:
                try:
                    await client.ping()
                    return
                except (aioredis.RedisError, OSError):
                    if loop.time() > deadline or self.process.returncode is not None:
                        raise
                    await asyncio.sleep(0.01)
        finally:
            await client.aclose()

    async def kill(self) -> None:
        """SIGKILL: connections drop at once, nothing is flushed."""
        if self.process is not None:
            if self.process.returncode is None:
                self.process.kill()
            await self.process.wait()
        self.process = None

    def signal(self, signum: int) -> None:
        """Send ``signum`` (``SIGSTOP`` pauses it: connections stay open, nothing answers)."""
        assert self.process is not None
        self.process.send_signal(signum)
