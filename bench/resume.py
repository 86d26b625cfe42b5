"""The resume cost: how long a member that rejoins N messages behind takes to get them.

``python -m bench.resume [--behind 1000] [--size 8192] [--reps 7] [--redis]`` starts this project's
bench app (``bench/apps/nexios_ours.py``) pinned to core 0, publishes ``behind``
messages of ``size`` bytes to a group nobody reads, then, ``reps`` times, a ``picows``
client pinned to core 1 connects to ``/ws/resume?since=<the position before them>``
and times the handshake and the replay of every message, checking that each arrives once
and in order. It prints the median, the spread and the server's CPU per replayed message.
With ``--redis`` the broker is Redis: the group has no member when the messages are
published, so the server's copy of the log starts at the top and the replay reads the
Redis stream.
Only nexios has resume: there is nothing to compare it with but the live delivery of
the same messages (the ``flood-1-8k`` row of ``bench/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def measure(port: int, pid: int, behind: int, size: int, reps: int) -> dict[str, object]:
    """Runs in the client process (pinned to its core)."""
    import uvloop
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    from bench.client import proc_cpu

    class Control(WSListener):  # type: ignore[misc]
        def __init__(self) -> None:
            self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            text = frame.get_payload_as_ascii_text()
            if text.startswith("done") and not self.done.done():
                self.done.set_result(text)

    class Replay(WSListener):  # type: ignore[misc]
        def __init__(self, first: int) -> None:
            self.next = first
            self.count = 0
            self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.bad = 0

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type is WSMsgType.CLOSE and not self.finished.done():
                self.finished.set_exception(RuntimeError(frame.get_close_message()))
                return
            if frame.msg_type is not WSMsgType.BINARY:
                return
            seq = int.from_bytes(frame.get_payload_as_bytes()[:8], "big")
            if seq != self.next:
                self.bad += 1
            self.next = seq + 1
            self.count += 1
            if self.count == behind and not self.finished.done():
                self.finished.set_result(None)

    async def run() -> dict[str, object]:
        base = f"ws://127.0.0.1:{port}"
        _, control = await ws_connect(Control, base + "/ws/control")
        control.transport = _
        _.send(WSMsgType.TEXT, b"f 0 %d %d" % (behind, size))
        done = await asyncio.wait_for(control.done, 60)
        top = done.rsplit("position=", 1)[1]
        offset, _, epoch = top.partition(":")
        since = f"{int(offset) - behind}:{epoch}"
        times, cpu = [], []
        for _rep in range(reps):
            cpu0, t0 = proc_cpu(pid), time.perf_counter()
            transport, replay = await ws_connect(
                lambda: Replay(0), f"{base}/ws/resume?since={since}"
            )
            await asyncio.wait_for(replay.finished, 30)
            took = time.perf_counter() - t0
            cpu.append(proc_cpu(pid) - cpu0)
            times.append(took)
            if replay.bad:
                raise RuntimeError(f"{replay.bad} messages out of order")
            transport.disconnect()
            await asyncio.sleep(0.2)
        return {
            "behind": behind,
            "size": size,
            "reps": reps,
            "median_ms": round(statistics.median(times) * 1000, 2),
            "min_ms": round(min(times) * 1000, 2),
            "max_ms": round(max(times) * 1000, 2),
            "server_cpu_us_per_message": round(statistics.median(cpu) / behind * 1e6, 2),
        }

    return uvloop.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--behind", type=int, default=1000)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument(
        "--redis", action="store_true", help="the broker is Redis: the replay reads the stream"
    )
    parser.add_argument(
        "--save", action="store_true", help="append the result to bench/resume.jsonl"
    )
    parser.add_argument("--client", help=argparse.SUPPRESS)  # "port pid": the client side
    args = parser.parse_args()
    if args.client:
        port, pid = (int(x) for x in args.client.split())
        print(json.dumps(measure(port, pid, args.behind, args.size, args.reps)))
        return
    from bench.run import CLIENT_CORE, FRAMEWORKS, REDIS_URL, start_server, stop_server

    logdir = BENCH / "out"
    logdir.mkdir(exist_ok=True)
    env = dict(os.environ)
    if args.redis:
        env["NEXIOS_BROKER_URL"] = REDIS_URL
        env["BENCH_GROUP"] = f"resume-{os.getpid()}"  # a log of its own in Redis
    server = start_server(sys.executable, FRAMEWORKS["nexios"], env, logdir)
    try:
        cmd = [
            "taskset", "-c", CLIENT_CORE, sys.executable, "-m", "bench.resume",
            "--behind", str(args.behind), "--size", str(args.size), "--reps", str(args.reps),
            "--client", f"{server.port} {server.proc.pid}",
        ]  # fmt: skip
        out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        git = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        result = {"broker": "redis" if args.redis else "memory", **result, "git": git, "at": at}
        print(json.dumps(result))
        if args.save:
            with (BENCH / "resume.jsonl").open("a") as saved:
                saved.write(json.dumps(result) + "\n")
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()
