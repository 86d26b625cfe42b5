"""The orchestrator: ``python -m bench`` (full run) or ``python -m bench --smoke`` (CI).

For each repetition, each workload and each framework (the frameworks in a rotated order,
so repetitions interleave), it starts fresh server processes pinned to ``SERVER_CORE``,
runs one load-generator process (``bench/client.py``) pinned to ``CLIENT_CORE``, appends
the measurements as one JSON line, and stops the servers (always, in ``finally``). Then it
renders ``bench/RESULTS.md`` (medians over the repetitions, ratios to the raw ASGI app)
and ``bench/fanout.png``.

Competitors run from their own virtual environments under ``bench/.venvs/`` (created here
on first use: the published ``nexios`` has our import name); ours runs from the
interpreter that runs this module (the project's ``.venv``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENVS = BENCH / ".venvs"
OUT = BENCH / "out"  # scratch: smoke results, logs, profiles (gitignored)
SERVER_CORE = "0"
CLIENT_CORE = "1"
REDIS_URL = "redis://127.0.0.1:6379/0"

# What every competitor venv gets, at our venv's versions of the same packages.
WIRE = ("uvicorn", "websockets", "uvloop", "httptools")
STARLETTE = "starlette==1.10.0"
NEXIOS_PYPI = "nexios==3.12.3"
PLOT = "matplotlib==3.11.2"


@dataclass(frozen=True)
class Framework:
    name: str  # column label
    app: str  # file under bench/apps
    kind: str  # "nexios" (make_config, nexios' protocol) or "sansio" (uvicorn's)
    venv: str | None  # None: this interpreter (ours)
    extra: tuple[str, ...] = ()
    groups: bool = False  # cross-process groups (Redis)


FRAMEWORKS = {
    "raw": Framework("raw ASGI", "raw_asgi.py", "sansio", "raw"),
    "starlette": Framework("Starlette", "starlette_app.py", "sansio", "starlette", (STARLETTE,)),
    "nexios-pypi": Framework(
        "nexios 3.12 (PyPI)", "nexios_pypi.py", "sansio", "nexios-pypi", (NEXIOS_PYPI,)
    ),
    "nexios": Framework("nexios (ours)", "nexios_ours.py", "nexios", None, groups=True),
    # Diagnostic, not in the default set: our app on uvicorn's own sans-I/O protocol,
    # to tell the cost of nexios' protocol subclass from the framework's.
    "nexios-sansio": Framework(
        "nexios (ours) on uvicorn's protocol", "nexios_ours.py", "sansio", None, groups=True
    ),
    # Diagnostic: the raw ASGI app on nexios' protocol, to tell what the protocol gains
    # from what the framework costs on it.
    "raw-nexios": Framework("raw ASGI on nexios' protocol", "raw_asgi.py", "nexios", None),
}
DEFAULT = ("raw", "starlette", "nexios-pypi", "nexios")


@dataclass
class Workload:
    key: str  # e.g. "fanout-1000"
    kind: str  # client workload: echo, fanout, idle
    size: int  # connections
    spec: dict[str, Any]
    servers: int = 1
    needs_groups: bool = False  # cross-process: only frameworks with groups
    redis: bool = False


def workloads(smoke: bool) -> list[Workload]:
    if smoke:
        fan = {"broadcasts": 20, "timeout": 2.0, "warmup_limit": 3.0}
        return [
            Workload("echo", "echo", 8, {"warmup": 0.2, "duration": 0.6}),
            Workload("fanout-100", "fanout", 100, fan),
            Workload("idle-100", "idle", 100, {"settle": 0.2, "hold": 0.2}),
            Workload(
                "slow-100",
                "fanout",
                99,
                {**fan, "slow": 1, "timeout": 0.5, "warmup_limit": 0.4, "fill_wait": 0.2},
            ),
            Workload("cross-100", "fanout", 100, fan, servers=2, needs_groups=True, redis=True),
            # 9 reading members and 1 that never reads.
            Workload(
                "flood-10",
                "flood",
                9,
                {
                    "messages": 2000,
                    "size": 4096,
                    "stalled": 1,
                    "quiet": 2.0,  # more than the pacing bound (pace_timeout, 1 s)
                    "timeout": 5.0,
                    "fate_wait": 0.3,
                    "warmup_limit": 3.0,
                },
            ),
        ]
    fan = {"broadcasts": 200, "timeout": 10.0, "warmup_limit": 10.0}
    flood = {"stalled": 10, "quiet": 3.0, "timeout": 90.0, "fate_wait": 2.0, "warmup_limit": 10.0}
    return [
        Workload("echo", "echo", 64, {"warmup": 1.0, "duration": 5.0}),
        Workload("fanout-1000", "fanout", 1000, fan),
        Workload("fanout-5000", "fanout", 5000, fan),
        Workload("idle-1000", "idle", 1000, {"settle": 1.0, "hold": 2.0}),
        Workload("idle-5000", "idle", 5000, {"settle": 1.5, "hold": 2.0}),
        # 1% of 1,000 clients do not read: 990 healthy members and 10 slow ones.
        Workload(
            "slow-1000",
            "fanout",
            990,
            {**fan, "slow": 10, "timeout": 5.0, "warmup_limit": 6.0, "fill_wait": 1.0},
        ),
        Workload("cross-1000", "fanout", 1000, fan, servers=2, needs_groups=True, redis=True),
        # Open loop: the handler publishes as fast as it can. 990 reading members and 10
        # that never read; then a single reading member.
        Workload(
            "flood-1000",
            "flood",
            990,
            {**flood, "messages": 10_000, "size": 8192, "timeout": 180.0},
        ),
        Workload("flood-1", "flood", 1, {**flood, "messages": 3000, "size": 65536, "stalled": 0}),
        # Issue 11's own case: 3,000 messages of 8 KiB to one member that reads.
        Workload("flood-1-8k", "flood", 1, {**flood, "messages": 3000, "size": 8192, "stalled": 0}),
    ]


# ---------------------------------------------------------------------- environments


def our_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in WIRE}


def venv_python(fw: Framework, smoke: bool) -> str:
    """The interpreter that serves ``fw``; creates its venv on first use."""
    if fw.venv is None or (smoke and fw.venv == "raw"):
        return sys.executable
    path = VENVS / fw.venv
    python = path / "bin" / "python"
    wire = our_versions()
    reqs = [f"{name}=={wire[name]}" for name in WIRE] + list(fw.extra)
    return ensure_venv(path, reqs, python)


def ensure_venv(path: Path, reqs: list[str], python: Path) -> str:
    marker = path / "bench-requirements.txt"
    wanted = "\n".join(reqs) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return str(python)
    log(f"creating {path.relative_to(REPO)}: {' '.join(reqs)}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    done = subprocess.run([*pip, *reqs], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(reqs)} failed:\n{done.stderr[-3000:]}")
    marker.write_text(wanted)
    return str(python)


def venv_versions(python: str, names: list[str]) -> dict[str, str]:
    code = (
        "import json, sys, importlib.metadata as m\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "out['python'] = sys.version.split()[0]\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [python, "-I", "-c", code, *names], capture_output=True, text=True, timeout=60
    )
    try:
        versions: dict[str, str] = json.loads(done.stdout)
    except ValueError:
        return {"error": (done.stdout + done.stderr)[-300:]}
    return versions


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def log(text: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    logfile: Path
    handle: Any = field(repr=False)

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.logfile.read_text(errors="replace")[-2000:]
        return ""


def start_server(python: str, fw: Framework, env: dict[str, str], logdir: Path) -> Server:
    port = free_port()
    logfile = logdir / f"server-{fw.app.removesuffix('.py')}-{port}.log"
    env = {**env, "BENCH_GC_LOG": str(logfile.with_suffix(".gc.json"))}
    handle = logfile.open("wb")
    cmd = [
        "taskset",
        "-c",
        SERVER_CORE,
        python,
        "-I",
        str(BENCH / "serve.py"),
        str(BENCH / "apps" / fw.app),
        str(port),
        fw.kind,
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    server = Server(proc, port, logfile, handle)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop_server(server)
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server  # uvicorn listens once the lifespan startup is done
        except OSError:
            time.sleep(0.05)
    stop_server(server)
    raise RuntimeError(f"server did not listen within 20 s:\n{server.tail()}")


def stop_server(server: Server) -> None:
    proc = server.proc
    try:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
    finally:
        server.handle.close()


@contextlib.contextmanager
def servers(
    python: str, fw: Framework, count: int, env: dict[str, str], logdir: Path
) -> Iterator[list[Server]]:
    started: list[Server] = []
    try:
        for _ in range(count):
            started.append(start_server(python, fw, env, logdir))
        yield started
    finally:
        for server in started:
            stop_server(server)


def run_client(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = ["taskset", "-c", CLIENT_CORE, sys.executable, "-m", "bench.client", json.dumps(spec)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=spec["limit"] + 20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"ok": False, "error": "client did not finish in time (killed)"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = out.decode(errors="replace").strip().splitlines()
    if not lines:
        return {"ok": False, "error": f"client printed nothing: {err.decode()[-1500:]}"}
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except ValueError:
        tail = out.decode(errors="replace")[-500:] + err.decode(errors="replace")[-1500:]
        return {"ok": False, "error": f"client output is not JSON: {tail}"}
    return result


# ---------------------------------------------------------------------- one unit


def start_profiler(pid: int, path: Path) -> subprocess.Popen[bytes]:
    """py-spy, sampling ``pid`` without pausing it, on the client's core."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        raise SystemExit(f"--profile needs py-spy: {sys.executable} -m pip install py-spy")
    cmd = [
        "taskset",
        "-c",
        CLIENT_CORE,
        str(py_spy),
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--rate",
        "250",
        "--nonblocking",
        "--output",
        str(path),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached before the load starts
    return proc


def stop_profiler(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_unit(
    fw_key: str,
    python: str,
    wl: Workload,
    rep: int,
    smoke: bool,
    logdir: Path,
    profile: bool = False,
) -> dict[str, Any]:
    fw = FRAMEWORKS[fw_key]
    env = dict(os.environ)
    env["BENCH_GROUP"] = f"bench-{uuid.uuid4().hex[:12]}"
    env.pop("NEXIOS_BROKER_URL", None)
    if wl.redis:
        env["NEXIOS_BROKER_URL"] = REDIS_URL
    record: dict[str, Any] = {
        "framework": fw_key,
        "workload": wl.key,
        "kind": wl.kind,
        "size": wl.size,
        "rep": rep,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load": loadavg(),
    }
    try:
        with servers(python, fw, wl.servers, env, logdir) as started:
            path = {"echo": "/ws/echo", "idle": "/ws/echo", "flood": "/ws/flood"}.get(
                wl.kind, "/ws/fan"
            )
            spec = {
                "workload": wl.kind,
                "connections": wl.size,
                "urls": [f"ws://127.0.0.1:{s.port}{path}" for s in started],
                "server_pids": [s.proc.pid for s in started],
                "limit": 40 if smoke else 240,
                **wl.spec,
            }
            profilers = []
            try:
                if profile:
                    for i, server in enumerate(started):
                        path = OUT / f"profile-{wl.key}-{fw_key}-{rep}-{i}.txt"
                        profilers.append((start_profiler(server.proc.pid, path), path))
                result = run_client(spec)
            finally:
                for proc, _ in profilers:
                    stop_profiler(proc)
            if profilers:
                result["profiles"] = [_rel(path) for _, path in profilers]
            if not result.get("ok"):
                result["server_log"] = "\n".join(s.tail() for s in started)[-3000:]
            window = result.get("window_ns")
            for server in started:
                if server.proc.poll() is not None:
                    result["ok"] = False
                    result["error"] = f"server died ({server.proc.returncode})"
                    result["server_log"] = server.tail()
    except Exception as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        window = None
    if window and result.get("ok"):
        result.update(gc_in_window(started, window))
    record.update(result)
    return record


def gc_in_window(started: list[Server], window: list[int]) -> dict[str, Any]:
    """The servers' garbage collections that began in the measured window (``serve.py``
    logs them once stopped): count and milliseconds per generation, and their share of
    the servers' CPU time in the window."""
    t0, t1 = window
    count = [0, 0, 0]
    spent = [0, 0, 0]
    longest = 0
    for server in started:
        path = server.logfile.with_suffix(".gc.json")
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}  # killed before it could write: no GC figures
        finally:
            path.unlink(missing_ok=True)
        for generation, start, duration in entries:
            if t0 <= start < t1:
                count[generation] += 1
                spent[generation] += duration
                longest = max(longest, duration)
    return {
        "gc_count": count,
        "gc_ms": [round(ns / 1e6, 1) for ns in spent],
        "gc_longest_ms": round(longest / 1e6, 1),
    }


# ---------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny run: ours vs raw, < 20 s")
    parser.add_argument("--reps", type=int, help="repetitions (default 5; smoke 1)")
    parser.add_argument("--frameworks", help=f"comma-separated, of {','.join(FRAMEWORKS)}")
    parser.add_argument("--workloads", help="comma-separated workload keys (default all)")
    parser.add_argument("--out", type=Path, help="JSON lines file (default bench/results.jsonl)")
    parser.add_argument("--results", type=Path, help="Markdown file (default bench/RESULTS.md)")
    parser.add_argument("--render", type=Path, metavar="JSONL", help="only render this file")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record the servers with py-spy (bench/out/profile-*.txt) and summarise",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from bench import report

    if args.render:
        report.render(args.render, args.results or BENCH / "RESULTS.md", plot=not args.no_plot)
        return 0

    smoke = args.smoke
    reps = args.reps or (1 if smoke else 5)
    fw_keys = (args.frameworks or ("raw,nexios" if smoke else ",".join(DEFAULT))).split(",")
    for key in fw_keys:
        if key not in FRAMEWORKS:
            raise SystemExit(f"unknown framework {key!r}: use {', '.join(FRAMEWORKS)}")
    wls = workloads(smoke)
    if args.workloads:
        wanted = args.workloads.split(",")
        wls = [w for w in wls if w.key in wanted or w.kind in wanted]
    OUT.mkdir(exist_ok=True)
    out = (args.out or (OUT / "smoke.jsonl" if smoke else BENCH / "results.jsonl")).resolve()
    results_md = (args.results or (OUT / "SMOKE.md" if smoke else BENCH / "RESULTS.md")).resolve()
    logdir = OUT / "logs"
    logdir.mkdir(exist_ok=True)

    nofile = raise_nofile()
    if max(w.size for w in wls) + 200 > nofile[0]:
        raise SystemExit(f"open-file limit {nofile} is too low for {max(w.size for w in wls)}")
    started_at = time.monotonic()
    pythons = {key: venv_python(FRAMEWORKS[key], smoke) for key in fw_keys}
    have_redis = redis_up()
    if not have_redis and any(w.redis for w in wls):
        log("no Redis on 127.0.0.1:6379: the cross-process workload is skipped")
    command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    meta = {
        "meta": True,
        "command": command.strip(),
        "smoke": smoke,
        "reps": reps,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_at_start": Path("/proc/loadavg").read_text().strip(),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": cpu_model(),
            "kernel": platform.release(),
            "nofile": nofile,
            "server_core": SERVER_CORE,
            "client_core": CLIENT_CORE,
        },
        "git": git_rev(),
        "versions": {
            key: venv_versions(pythons[key], [*WIRE, "starlette", "nexios", "picows"])
            for key in fw_keys
        },
        "frameworks": {key: FRAMEWORKS[key].name for key in fw_keys},
        "workloads": {w.key: {"kind": w.kind, "size": w.size, **w.spec} for w in wls},
    }
    if loadavg() >= 0.5:
        log(f"warning: the machine is busy (load {loadavg()}): figures will be noisy")
    failures = 0
    with out.open("w") as sink:
        sink.write(json.dumps(meta) + "\n")
        for rep in range(reps):
            for wl in wls:
                eligible = [k for k in fw_keys if FRAMEWORKS[k].groups or not wl.needs_groups]
                if wl.redis and not have_redis:
                    eligible = []
                shift = rep % len(eligible) if eligible else 0
                for key in eligible[shift:] + eligible[:shift]:
                    record = run_unit(key, pythons[key], wl, rep, smoke, logdir, args.profile)
                    sink.write(json.dumps(record) + "\n")
                    sink.flush()
                    log(summary(record))
                    if not record.get("ok"):
                        failures += 1
                    for path in record.get("profiles", []):
                        from bench.profile import summary as profile_summary

                        log(profile_summary(REPO / path, top=20))
    log(f"done in {time.monotonic() - started_at:.0f} s: {_rel(out)}")
    report.render(out, results_md, plot=not (args.no_plot or smoke))
    log(f"rendered {_rel(results_md)}")
    if smoke:
        problems = report.smoke_problems(out)
        for problem in problems:
            log(f"SMOKE FAILURE: {problem}")
        return 1 if problems else 0
    return 1 if failures else 0


def summary(record: dict[str, Any]) -> str:
    head = f"rep {record['rep']} {record['workload']:<12} {record['framework']:<12}"
    if not record.get("ok"):
        return f"{head} FAILED: {record.get('error')}"
    keys = (
        "msgs_per_s",
        "deliveries_per_s",
        "p50_ms",
        "p99_ms",
        "bytes_per_conn",
        "completed",
        "end",
        "lost_total",
        "lost_members",
        "publisher_done_s",
        "rss_peak",
        "stalled_fate",
        "server_cpu",
        "client_cpu",
    )
    return head + " " + " ".join(f"{k}={record[k]}" for k in keys if k in record)


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def git_rev() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return rev + (" (src/ has uncommitted changes)" if dirty else "")
