"""The load generator: one process, uvloop and the ``picows`` client.

``python -m bench.client SPEC_JSON`` runs one workload against running servers and prints
one JSON object (its measurements) as the last line of stdout. The orchestrator
(``bench/run.py``) starts it pinned to its own core with ``taskset``.

Every phase is bounded: connecting, each broadcast, the echo window and the whole run
(``SPEC["limit"]`` seconds) stop by themselves; a broadcast that does not reach every
healthy client in time is reported as a stall, not waited for.

Clocks: every timestamp is ``time.monotonic_ns()`` taken in this process (the publisher
and the receivers are the same process), so no clock crosses a process boundary. CPU:
this process's own CPU time (``time.process_time``) and the servers' ``utime + stime``
from ``/proc/<pid>/stat``, over the same measured window; memory: the servers'
``VmRSS`` from ``/proc/<pid>/status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

TEXT = WSMsgType.TEXT
BINARY = WSMsgType.BINARY
CLOSE = WSMsgType.CLOSE
CLK_TCK = os.sysconf("SC_CLK_TCK")
ECHO_PAYLOAD = b"e" * 32  # 32-byte text message
CONNECT_CONCURRENCY = 100  # handshakes in flight at once
SEQ_OFFSET = 1000  # measured broadcasts are numbered from here; warm-ups below

now_ns = time.monotonic_ns


def raise_nofile() -> None:
    """Raise the soft limit on open files to the hard limit (5,000 sockets need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------- /proc readings


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) that process ``pid`` has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # Fields after "(comm)": state is index 0, utime is field 14 of the whole line.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of process ``pid``, in bytes (``VmHWM``: its peak so far)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


class Window:
    """CPU used by this process and the servers between ``start()`` and ``stop()``."""

    def __init__(self, server_pids: list[int]) -> None:
        self.pids = server_pids
        self.t0 = self.t1 = 0
        self.cpu0 = self.cpu1 = 0.0
        self.srv0: list[float] = []
        self.srv1: list[float] = []

    def start(self) -> None:
        self.t0 = now_ns()
        self.cpu0 = time.process_time()
        self.srv0 = [proc_cpu(p) for p in self.pids]

    def stop(self) -> None:
        self.t1 = now_ns()
        self.cpu1 = time.process_time()
        self.srv1 = [proc_cpu(p) for p in self.pids]

    @property
    def seconds(self) -> float:
        return (self.t1 - self.t0) / 1e9

    def report(self) -> dict[str, Any]:
        wall = self.seconds
        server = [b - a for a, b in zip(self.srv0, self.srv1, strict=True)]
        return {
            "window_s": round(wall, 4),
            "window_ns": [self.t0, self.t1],  # time.monotonic_ns(): the servers' GC logs
            # Percent of one core, averaged over the window (100 = one core busy).
            "server_cpu": round(100 * sum(server) / wall, 1),
            "server_cpu_each": [round(100 * s / wall, 1) for s in server],
            "client_cpu": round(100 * (self.cpu1 - self.cpu0) / wall, 1),
        }


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
    return ordered[index]


# ---------------------------------------------------------------------- connections


class Listener(WSListener):  # type: ignore[misc]
    """A connection; what to do with each text frame is the workload's ``on_text``."""

    def __init__(self, on_text: Callable[[Listener, WSFrame], None] | None) -> None:
        self.on_text = on_text
        self.transport: WSTransport | None = None
        self.sent = 0
        self.closed = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is TEXT and self.on_text is not None:
            self.on_text(self, frame)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True


async def connect_many(
    url: str, count: int, on_text: Callable[[Listener, WSFrame], None] | None, limit: float
) -> list[Listener]:
    """Open ``count`` connections, ``CONNECT_CONCURRENCY`` handshakes at a time."""
    return await open_many(url, count, lambda: Listener(on_text), limit)


async def open_many(
    url: str, count: int, factory: Callable[[], Any], limit: float, **options: Any
) -> list[Any]:
    """Open ``count`` connections with listeners from ``factory``; ``options`` go to
    ``ws_connect``."""
    if count <= 0:
        return []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> Any:
        async with gate:
            _, listener = await ws_connect(factory, url, websocket_handshake_timeout=10, **options)
            return listener

    return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), limit)


def close_all(listeners: list[Listener]) -> None:
    for listener in listeners:
        if listener.transport is not None:
            listener.transport.disconnect(graceful=False)


# ---------------------------------------------------------------------- echo


async def echo(spec: dict[str, Any]) -> dict[str, Any]:
    """``connections`` clients, each sending 32 bytes of text and awaiting the echo."""
    latencies: list[int] = []
    state = {"recording": False, "running": True, "count": 0, "outstanding": 0}
    drained = asyncio.get_running_loop().create_future()

    def on_text(conn: Listener, frame: WSFrame) -> None:
        t = now_ns()
        if state["recording"]:
            latencies.append(t - conn.sent)
            state["count"] += 1
        if state["running"]:
            conn.sent = t
            conn.transport.send(TEXT, ECHO_PAYLOAD)  # type: ignore[union-attr]
        else:
            state["outstanding"] -= 1
            if not state["outstanding"] and not drained.done():
                drained.set_result(None)

    conns = await connect_many(spec["urls"][0], spec["connections"], on_text, 30)
    window = Window(spec["server_pids"])
    for conn in conns:
        conn.sent = now_ns()
        conn.transport.send(TEXT, ECHO_PAYLOAD)  # type: ignore[union-attr]
    await asyncio.sleep(spec["warmup"])
    state["recording"] = True
    window.start()
    await asyncio.sleep(spec["duration"])
    state["recording"] = False
    window.stop()
    state["running"] = False
    state["outstanding"] = len(conns)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(drained, 5)
    close_all(conns)
    ms = [x / 1e6 for x in latencies]
    return {
        "messages": state["count"],
        "msgs_per_s": round(state["count"] / window.seconds, 1),
        "p50_ms": round(percentile(ms, 0.50), 4),
        "p99_ms": round(percentile(ms, 0.99), 4),
        **window.report(),
    }


# ---------------------------------------------------------------------- fan-out


class FanOut:
    """Counts deliveries per broadcast; wakes the publisher when the last one arrives."""

    def __init__(self, expected: int, total: int) -> None:
        self.expected = expected
        self.counts = [0] * total
        self.done_at = [0] * total
        self.waiting = -1
        self.waiter: asyncio.Future[None] | None = None
        self.deliveries = 0

    def on_text(self, conn: Listener, frame: WSFrame) -> None:
        seq = int(frame.get_payload_as_ascii_text()[:8])
        self.deliveries += 1
        count = self.counts[seq] = self.counts[seq] + 1
        if count == self.expected:
            self.done_at[seq] = now_ns()
            if seq == self.waiting and self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)

    async def broadcast(self, control: Listener, seq: int, timeout: float) -> int | None:
        """Trigger broadcast ``seq``; nanoseconds until the last client had it, or None."""
        self.waiting = seq
        self.waiter = asyncio.get_running_loop().create_future()
        t0 = now_ns()
        control.transport.send(TEXT, b"p %d" % seq)  # type: ignore[union-attr]
        try:
            await asyncio.wait_for(self.waiter, timeout)
        except TimeoutError:
            return None
        return self.done_at[seq] - t0


async def fanout(spec: dict[str, Any]) -> dict[str, Any]:
    """Members on each URL, one publisher: ``broadcasts`` one after another, each sent
    once the previous one reached every (healthy) member.

    ``slow``: that many more members ask the server to fill their socket (``fill``) and
    stop reading; they are not waited for.
    """
    urls: list[str] = spec["urls"]
    per_url: int = spec["connections"] // len(urls)
    slow: int = spec.get("slow", 0)
    broadcasts: int = spec["broadcasts"]
    timeout: float = spec["timeout"]
    expected = per_url * len(urls)
    state = FanOut(expected, SEQ_OFFSET + broadcasts)
    base = urls[0].rsplit("/ws/", 1)[0]

    members: list[Listener] = []
    slow_conns: list[Listener] = []
    control: list[Listener] = []
    try:
        for url in urls:
            members += await connect_many(url, per_url, state.on_text, 60)
        if slow:
            slow_conns = await connect_many(urls[0], slow, None, 30)
            for conn in slow_conns:
                conn.transport.underlying_transport.pause_reading()  # type: ignore[union-attr]
                conn.transport.send(TEXT, b"fill")  # type: ignore[union-attr]
        control = await connect_many(base + "/ws/control", 1, None, 10)
        if slow:
            await asyncio.sleep(spec.get("fill_wait", 1.0))

        # Warm-up: until 3 broadcasts in a row reach everybody (members have joined,
        # subscriptions are live), at most SEQ_OFFSET tries and warmup_limit seconds.
        good = 0
        warm_deadline = time.monotonic() + spec.get("warmup_limit", 10.0)
        for seq in range(SEQ_OFFSET):
            result = await state.broadcast(control[0], seq, min(timeout, 2.0))
            good = good + 1 if result is not None else 0
            if good >= 3 or time.monotonic() > warm_deadline:
                break
        result_base: dict[str, Any] = {"members": expected, "slow": slow}
        if good < 3:
            return {**result_base, "stalled": True, "completed": 0, "warmup_failed": True}

        window = Window(spec["server_pids"])
        delivered0 = state.deliveries
        latencies: list[int] = []
        window.start()
        for seq in range(SEQ_OFFSET, SEQ_OFFSET + broadcasts):
            result = await state.broadcast(control[0], seq, timeout)
            if result is None:
                break
            latencies.append(result)
        window.stop()
        deliveries = state.deliveries - delivered0
        ms = [x / 1e6 for x in latencies]
        return {
            **result_base,
            "stalled": len(latencies) < broadcasts,
            "completed": len(latencies),
            "broadcasts": broadcasts,
            "deliveries": deliveries,
            "deliveries_per_s": round(deliveries / window.seconds, 1),
            "p50_ms": round(percentile(ms, 0.50), 3),
            "p99_ms": round(percentile(ms, 0.99), 3),
            "max_ms": round(max(ms), 3) if ms else float("nan"),
            "latencies_ms": [round(x, 3) for x in ms],  # each broadcast, in order
            **window.report(),
        }
    finally:
        close_all(members + slow_conns + control)


# ---------------------------------------------------------------------- idle


async def idle(spec: dict[str, Any]) -> dict[str, Any]:
    """Server RSS before and after opening ``connections`` idle connections."""
    pid = spec["server_pids"][0]
    url = spec["urls"][0]
    # Warm the server up (first connections import and allocate lazily), then measure.
    warm = await connect_many(url, 50, None, 30)
    close_all(warm)
    await asyncio.sleep(spec.get("settle", 1.0))
    before = proc_rss(pid)
    conns: list[Listener] = []
    try:
        t0 = now_ns()
        conns = await connect_many(url, spec["connections"], None, 120)
        connect_s = (now_ns() - t0) / 1e9
        await asyncio.sleep(spec.get("settle", 1.0))
        after = proc_rss(pid)
        window = Window(spec["server_pids"])
        window.start()
        await asyncio.sleep(spec.get("hold", 2.0))
        window.stop()
        open_now = sum(1 for c in conns if not c.closed)
        return {
            "rss_before": before,
            "rss_after": after,
            "bytes_per_conn": round((after - before) / spec["connections"]),
            "open": open_now,
            "connect_s": round(connect_s, 3),
            "connects_per_s": round(spec["connections"] / connect_s, 1),
            **window.report(),
        }
    finally:
        close_all(conns)


# ---------------------------------------------------------------------- flood

# The server's end of a connection, in /proc/net/tcp (the kernel's tcp_states.h).
TCP_STATES = {"01": "ESTABLISHED", "04": "FIN_WAIT1", "05": "FIN_WAIT2", "07": "CLOSE"}
TCP_WATCH_EVERY = 1.0  # seconds between two readings of /proc/net/tcp
FLOOD_WARM = 1 << 40  # warm-up messages are numbered from here, measured ones from 0
STALLED_RCVBUF = 4096  # the receive buffer asked for a member that never reads


class FloodMember(WSListener):  # type: ignore[misc]
    """A member of the flood group. Counts, never keeps, what it receives: one bit per
    message number (``messages`` bits), so duplicates and out-of-order arrivals show."""

    def __init__(self, flood: Flood) -> None:
        self.flood = flood
        self.transport: WSTransport | None = None
        self.seen = bytearray((flood.messages + 7) // 8)
        self.unique = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.unknown = 0  # numbers outside the flood: a harness bug if ever non-zero
        self.highest = -1
        self.warm = -1  # the last warm-up message seen
        self.stalled = False  # never reads (until the fate check)
        self.late = 0  # frames a stalled member read in the fate check
        self.port = 0  # its local port: the server's end of it is in /proc/net/tcp
        self.left_ns = 0  # when the server's end was first seen out of ESTABLISHED
        self.tcp_state = ""
        self.closed = False
        self.close_code: int | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is BINARY:
            seq = int.from_bytes(frame.get_payload_as_memoryview()[:8], "big")
            if seq >= FLOOD_WARM:
                self.warm = seq
            elif self.stalled:
                self.late += 1
            elif seq >= self.flood.messages:
                self.unknown += 1
            else:
                self.count(seq)
        elif kind is CLOSE:
            self.close_code = int(frame.get_close_code())

    def count(self, seq: int) -> None:
        byte, bit = seq >> 3, 1 << (seq & 7)
        if self.seen[byte] & bit:
            self.duplicates += 1
            return
        self.seen[byte] |= bit
        self.unique += 1
        if seq < self.highest:
            self.out_of_order += 1
        else:
            self.highest = seq
        flood = self.flood
        flood.received += 1
        flood.last_ns = now_ns()
        if self.unique == flood.messages:
            flood.complete += 1

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        handshake = transport.close_handshake
        if self.close_code is None and handshake is not None and handshake.recv is not None:
            self.close_code = int(handshake.recv.code)


class Flood:
    """What every reading member received, added up as it arrives."""

    def __init__(self, messages: int) -> None:
        self.messages = messages
        self.received = 0  # distinct measured messages, all reading members
        self.complete = 0  # reading members that have all of them
        self.last_ns = 0  # the last one's arrival
        self.done_ns = 0  # the publisher's "done"
        self.done_text = ""

    def on_control(self, conn: Listener, frame: WSFrame) -> None:
        if self.done_ns == 0:
            self.done_ns = now_ns()
            self.done_text = frame.get_payload_as_ascii_text()


def small_receive_buffer(_url: Any) -> socket.socket:
    """An unconnected socket with a small receive buffer (set before the handshake, so
    the window it advertises stays small): a member that never reads fills it soon."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
    sock.setblocking(False)
    return sock


def server_ends(server_port: int) -> dict[int, str]:
    """The server's TCP sockets on ``server_port``: the client's port -> the state (hex).

    Seen from the server's side because a member that does not read cannot see its end:
    when the server closes a socket whose data the peer does not take, the kernel keeps
    it in FIN_WAIT1 behind that data, and the peer's socket stays ESTABLISHED."""
    ends = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split(None, 4)
            local, remote, state = fields[1], fields[2], fields[3]
            if int(local.rpartition(":")[2], 16) == server_port:
                ends[int(remote.rpartition(":")[2], 16)] = state
    return ends


def watch_tcp(stalled: list[FloodMember], server_port: int) -> None:
    """Note when the server's end of each stalled member's connection leaves ESTABLISHED
    (closed or aborted by the server), or is gone."""
    waiting = [m for m in stalled if not m.left_ns and m.port]
    if not waiting:
        return
    ends = server_ends(server_port)
    t = now_ns()
    for member in waiting:
        state = ends.get(member.port, "gone")
        if state != "01":
            member.left_ns = t
            member.tcp_state = TCP_STATES.get(state, state)


def fate(member: FloodMember) -> str:
    if member.closed:
        if member.close_code is not None:
            return f"closed {member.close_code}"
        return "closed, no close frame"
    return "open"


def tally(names: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in names:
        counts[item] = counts.get(item, 0) + 1
    return counts


async def flood(spec: dict[str, Any]) -> dict[str, Any]:
    """Reading members and ``stalled`` members that never read; the server publishes
    ``messages`` binary messages of ``size`` bytes to all of them as fast as it can.

    The flood ends when every reading member has every message, or when nothing arrived
    for ``quiet`` seconds while the server was idle (it stalled, or dropped the rest),
    or after ``timeout`` seconds. Then the stalled members read again for at most
    ``fate_wait`` seconds: did the server close them (with which code), or are they open?
    """
    url: str = spec["urls"][0]
    pid: int = spec["server_pids"][0]
    messages: int = spec["messages"]
    size: int = spec["size"]
    quiet: float = spec["quiet"]
    state = Flood(messages)
    base = url.rsplit("/ws/", 1)[0]
    readers: list[FloodMember] = []
    stalled: list[FloodMember] = []
    control: list[Listener] = []
    try:
        readers = await open_many(url, spec["connections"], lambda: FloodMember(state), 60)
        stalled = await open_many(
            url,
            spec.get("stalled", 0),
            lambda: FloodMember(state),
            30,
            socket_factory=small_receive_buffer,
        )
        control = await connect_many(base + "/ws/control", 1, state.on_control, 10)
        members = readers + stalled
        ctl = control[0].transport
        assert ctl is not None

        # Warm-up: one small message through the same path reaches every member (all
        # have joined), at most warmup_limit seconds.
        joined = False
        deadline = time.monotonic() + spec.get("warmup_limit", 10.0)
        seq = FLOOD_WARM
        while not joined and time.monotonic() < deadline:
            state.done_ns = 0
            ctl.send(TEXT, b"f %d 1 64" % seq)
            until = time.monotonic() + 2.0
            while time.monotonic() < min(until, deadline):
                await asyncio.sleep(0.005)
                if state.done_ns and all(m.warm == seq for m in members):
                    joined = True
                    break
            seq += 1
        if not joined:
            raise RuntimeError("warm-up: a member did not get the warm-up message")
        server_port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        for member in stalled:
            member.stalled = True
            underlying = member.transport.underlying_transport  # type: ignore[union-attr]
            underlying.pause_reading()
            member.port = underlying.get_extra_info("sockname")[1]
        await asyncio.sleep(0.1)  # the warm-up's last frames are read

        rss_before = proc_rss(pid)
        window = Window([pid])
        state.done_ns = 0
        state.done_text = ""
        window.start()
        t0 = window.t0
        ctl.send(TEXT, b"f 0 %d %d" % (messages, size))
        hard = t0 + int(spec["timeout"] * 1e9)
        seen, since_ns, since_cpu = 0, t0, proc_cpu(pid)
        next_watch = t0
        end = "timeout"
        while now_ns() < hard:
            await asyncio.sleep(0.05)
            if now_ns() >= next_watch:
                next_watch += int(TCP_WATCH_EVERY * 1e9)
                watch_tcp(stalled, server_port)
            if state.complete == len(readers):
                end = "complete"
                break
            t = now_ns()
            if state.received != seen:
                seen, since_ns, since_cpu = state.received, t, proc_cpu(pid)
            elif t - since_ns >= quiet * 1e9:
                busy = (proc_cpu(pid) - since_cpu) / ((t - since_ns) / 1e9)
                if busy < 0.2:  # nothing arrives and the server is (nearly) idle
                    end = "quiet"
                    break
        window.stop()
        rss_peak = proc_rss(pid, "VmHWM")
        rss_end = proc_rss(pid)
        # The readers' figures now: the fate check below may let a blocked server go on.
        lost = [messages - m.unique for m in readers]
        received = state.received
        flood_s = (state.last_ns - t0) / 1e9 if state.last_ns else float("nan")
        server_s = sum(window.srv1) - sum(window.srv0)
        result = {
            "members": len(readers),
            "stalled_members": len(stalled),
            "messages": messages,
            "message_bytes": size,
            "end": end,
            "received": received,
            "expected": messages * len(readers),
            "lost_total": sum(lost),
            "lost_worst": max(lost, default=0),
            "lost_members": sum(1 for x in lost if x),
            "duplicates": sum(m.duplicates for m in readers),
            "out_of_order": sum(m.out_of_order for m in readers),
            "unknown": sum(m.unknown for m in readers),
            "readers_closed": tally([fate(m) for m in readers if m.closed]),
            "flood_s": round(flood_s, 4),
            "deliveries_per_s": round(received / flood_s, 1) if received else 0.0,
            "publisher_done_s": round((state.done_ns - t0) / 1e9, 4) if state.done_ns else None,
            "publisher_note": state.done_text,
            "cpu_us_per_delivery": round(server_s / received * 1e6, 2) if received else None,
            "client_us_per_delivery": (
                round((window.cpu1 - window.cpu0) / received * 1e6, 2) if received else None
            ),
            "rss_before": rss_before,
            "rss_peak": rss_peak,
            "rss_end": rss_end,
            **window.report(),
        }

        # The stalled members' fate: read again, see whether the server closed them.
        for member in stalled:
            with contextlib.suppress(Exception):
                member.transport.underlying_transport.resume_reading()  # type: ignore[union-attr]
        fate_end = time.monotonic() + spec.get("fate_wait", 2.0)
        while stalled and time.monotonic() < fate_end:
            if all(m.closed for m in stalled):
                break
            await asyncio.sleep(0.02)
        result["stalled_fate"] = tally([fate(m) for m in stalled])
        left = sorted((m.left_ns - t0) / 1e9 for m in stalled if m.left_ns)
        # When (s after the trigger, to TCP_WATCH_EVERY) the server closed or aborted a
        # stalled member's connection during the flood; the state its end was found in.
        result["stalled_left_s"] = [round(x, 2) for x in left]
        result["stalled_tcp"] = tally([m.tcp_state for m in stalled if m.left_ns])
        result["stalled_late_frames"] = sum(m.late for m in stalled)
        return result
    finally:
        close_all(readers + stalled + control)  # type: ignore[arg-type]


WORKLOADS = {"echo": echo, "fanout": fanout, "idle": idle, "flood": flood}


async def main_async(spec: dict[str, Any]) -> dict[str, Any]:
    return await asyncio.wait_for(WORKLOADS[spec["workload"]](spec), spec["limit"])


def main() -> None:
    spec = json.loads(sys.argv[1])
    raise_nofile()
    try:
        result: dict[str, Any] = {"ok": True, **uvloop.run(main_async(spec))}
    except BaseException as exc:  # report, do not hang: the orchestrator reads the line
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # sockets close with the process


if __name__ == "__main__":
    main()
