"""Run the Autobahn WebSocket conformance cases against nexios (see docs/conformance.md).

    .venv/bin/python scripts/autobahn.py                 # all 517 cases, 4-5 minutes
    .venv/bin/python scripts/autobahn.py --quick         # the CI subset, about 5 seconds
    .venv/bin/python scripts/autobahn.py '7.*' 9.1.6     # chosen cases (kosoku's -i globs)
    .venv/bin/python scripts/autobahn.py -x '12.*' -x '13.*'

It starts ``scripts/autobahn_echo.py`` on a free port, waits until it answers, runs
``kosoku`` (the Autobahn fuzzing client; ``pip install kosoku``) against it, writes the
report to ``reports/<name>/`` (``index.html`` to browse, ``index.json`` to parse, the
server's log as ``server.log``), prints a summary, and always stops the server.

Exit status: 0 when every case passed, 1 when one did not or the server logged an error,
2 when the run could not be made. A case passes when both its behaviour and its closing
behaviour are OK, NON-STRICT or INFORMATIONAL (kosoku's own rule). UNIMPLEMENTED does
not pass: the echo server negotiates compression, so 12.x/13.x must run. An error in the
server's log (an exception in the app or the protocol) fails the run even if every case
passed: the peer's misbehaviour must never become a server-side crash.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
ECHO = ROOT / "scripts" / "autobahn_echo.py"

# The CI subset, 256 cases: every case of 1-7 and 10 (framing, pings, reserved bits and
# opcodes, fragmentation, UTF-8, closing), plus a taste of 9 (64 KiB text and binary
# messages, a 4 MiB one in 64-byte fragments) and of 12/13 (permessage-deflate: 1000 small
# messages each, three of the parameter offers). About 5 seconds; the full run takes 4-5
# minutes, nearly all of it in 9.x, 12.x and 13.x.
QUICK = (
    "1.*",
    "2.*",
    "3.*",
    "4.*",
    "5.*",
    "6.*",
    "7.*",
    "10.*",
    "9.1.1",
    "9.2.1",
    "9.3.1",
    "12.1.1",
    "12.1.2",
    "12.4.1",
    "13.1.1",
    "13.3.1",
    "13.5.1",
)

PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
BEHAVIOURS = ("OK", "NON-STRICT", "INFORMATIONAL", "FAILED", "UNIMPLEMENTED")
SERVER_ERROR_MARKERS = ("Traceback (most recent call last)", "Exception in ")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the Autobahn conformance cases against the nexios echo server."
    )
    parser.add_argument(
        "cases", nargs="*", help="case ids or globs (kosoku -i), e.g. '7.*' 9.1.6; default: all"
    )
    parser.add_argument(
        "-x", "--exclude", action="append", default=[], help="case id or glob to leave out"
    )
    parser.add_argument("--quick", action="store_true", help="run the CI subset (a few seconds)")
    parser.add_argument(
        "-p", "--parallelism", type=int, default=4, help="cases at once (default: 4)"
    )
    parser.add_argument(
        "-o", "--name", help="report folder under reports/ (default: autobahn, autobahn-quick)"
    )
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    args = parser.parse_args(argv)
    if args.quick and args.cases:
        parser.error("--quick picks its own cases: give either --quick or cases")
    return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kosoku_command() -> list[str]:
    beside = Path(sys.executable).parent / "kosoku"
    found = str(beside) if beside.exists() else shutil.which("kosoku")
    if found is None:
        sys.exit("kosoku is not installed: .venv/bin/pip install kosoku==0.1.0")
    return [found]


def wait_until_serving(port: int, server: subprocess.Popen[bytes], timeout: float) -> None:
    """Until an HTTP request to the server gets a status line back."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the echo server exited with status {server.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if sock.recv(16).startswith(b"HTTP/1.1 "):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the echo server did not answer on port {port} in {timeout:.0f}s")


def stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM (uvicorn's graceful shutdown), then SIGKILL if it is still there after 10 s."""
    if server.poll() is not None:
        return
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def group(case_id: str) -> str:
    return case_id.split(".")[0]


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def summarize(index: dict[str, dict[str, object]]) -> list[str]:
    """Print counts per behaviour, overall and per case group; return the failing cases."""
    cases = dict(sorted(index.items(), key=lambda item: case_key(item[0])))
    totals = collections.Counter(str(result["behavior"]) for result in cases.values())
    groups: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for case_id, result in cases.items():
        groups[group(case_id)][str(result["behavior"])] += 1
    width = 14
    print()
    print("group".ljust(6) + "".join(b.rjust(width) for b in (*BEHAVIOURS, "cases")))
    for name, counts in groups.items():
        row = [str(counts[b]) for b in BEHAVIOURS] + [str(sum(counts.values()))]
        print(name.ljust(6) + "".join(cell.rjust(width) for cell in row))
    row = [str(totals[b]) for b in BEHAVIOURS] + [str(len(cases))]
    print("all".ljust(6) + "".join(cell.rjust(width) for cell in row))
    others = sorted(set(totals) - set(BEHAVIOURS))
    if others:
        print("other behaviours: " + ", ".join(f"{b} {totals[b]}" for b in others))

    failing = []
    notable = []
    for case_id, result in cases.items():
        behavior, closing = str(result["behavior"]), str(result["behaviorClose"])
        line = (
            f"  {case_id:9} {behavior:14} close: {closing:14} "
            f"code {result['remoteCloseCode']}, {result['duration']} ms"
        )
        if behavior not in PASSING or closing not in PASSING:
            failing.append(case_id)
            notable.append(line + "  <- FAILS")
        elif behavior != "OK" or closing != "OK":
            notable.append(line)
    if notable:
        print("\nEvery case not plainly OK (behaviour, closing behaviour, server's close code):")
        print("\n".join(notable))
    return failing


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    includes = list(QUICK) if args.quick else args.cases
    name = args.name or ("autobahn-quick" if args.quick else "autobahn")
    outdir = ROOT / "reports" / name
    outdir.mkdir(parents=True, exist_ok=True)
    index_file = outdir / "index.json"
    index_file.unlink(missing_ok=True)
    port = args.port or free_port()
    command = [*kosoku_command(), f"ws://127.0.0.1:{port}/", "-p", str(args.parallelism)]
    command += ["-o", str(outdir)]
    for case in includes:
        command += ["-i", case]
    for case in args.exclude:
        command += ["-x", case]

    # A SIGTERM (CI's timeout, say) must still stop the server: make it unwind like Ctrl+C.
    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    log_path = outdir / "server.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, str(ECHO), str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            try:
                wait_until_serving(port, server, timeout=30)
            except RuntimeError as exc:
                print(f"autobahn: {exc}; its log:\n{log_path.read_text()}", file=sys.stderr)
                return 2
            print(f"autobahn: echo server on port {port}; running: {' '.join(command)}")
            sys.stdout.flush()
            kosoku = subprocess.run(command, check=False)
        except KeyboardInterrupt:
            print("autobahn: interrupted", file=sys.stderr)
            return 2
        finally:
            stop(server)
    elapsed = time.monotonic() - started

    if not index_file.exists():
        print(f"autobahn: kosoku exited with {kosoku.returncode} and wrote no report")
        return 2
    index = json.loads(index_file.read_text())
    results = {case: result for agent in index.values() for case, result in agent.items()}
    if not results:
        print("autobahn: no case ran (check the case filters)")
        return 2
    failing = summarize(results)

    server_log = log_path.read_text(errors="replace")
    server_errors = sum(server_log.count(marker) for marker in SERVER_ERROR_MARKERS)
    print(f"\n{len(results)} cases in {elapsed:.1f}s; report: {outdir / 'index.html'}")
    if server_errors:
        print(f"autobahn: the server logged errors: see {log_path}")
    if failing:
        print(f"autobahn: {len(failing)} case(s) did not pass: {', '.join(failing)}")
    if failing or server_errors:
        return 1
    print(f"autobahn: all {len(results)} cases passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
