"""Start one benchmark server: ``python -I bench/serve.py APP_FILE PORT KIND``.

Runs inside whichever virtual environment serves the app (ours or a competitor's), so it
uses the standard library and uvicorn only and imports the app from its file path.

KIND ``nexios`` serves with ``nexios.server.make_config`` (nexios' uvicorn protocol, a
subclass of uvicorn's websockets sans-I/O protocol, with the app's ``websocket_config``:
what ``app.run()`` does); KIND ``sansio`` serves with uvicorn's own
``ws="websockets-sansio"``. Both: httptools, uvloop, logging at WARNING, no access log.
With ``$BENCH_GC_LOG`` set, every garbage collection is timed and written there at exit.
"""

from __future__ import annotations

import atexit
import gc
import importlib.util
import json
import os
import sys
import time
from typing import Any


def load(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("bench_app", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


def record_gc(path: str) -> None:
    """Log every garbage collection (generation, start and duration, monotonic ns) and
    write them to ``path`` at exit: the orchestrator counts those in the measured window.
    A bounded list: at most 200,000 collections are kept."""
    log: list[tuple[int, int, int]] = []
    started = [0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.monotonic_ns()
        elif len(log) < 200_000:
            log.append((info["generation"], started[0], time.monotonic_ns() - started[0]))

    def dump() -> None:
        with open(path, "w") as f:
            json.dump(log, f)

    gc.callbacks.append(on_gc)
    atexit.register(dump)


def main() -> None:
    path, port, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    gc_log = os.environ.get("BENCH_GC_LOG")
    if gc_log:
        record_gc(gc_log)
    app = load(path)
    import uvicorn

    common: dict[str, Any] = {
        "http": "httptools",
        "loop": "uvloop",
        "lifespan": "on",
        "log_level": "warning",
        "access_log": False,
    }
    if kind == "nexios":
        from nexios.server import make_config

        # A NexiosApp's settings, as app.run() passes them; make_config's defaults (the
        # same values) for a plain ASGI app.
        ws = getattr(app, "websocket_config", None)
        settings = {}
        if ws is not None:
            settings = {
                "ping_interval": ws.ping_interval,
                "ping_timeout": ws.ping_timeout,
                "max_message_size": ws.max_message_size,
                "compression": ws.compression,
                "limits": ws.server_limits(),
            }
        config = make_config(app, "127.0.0.1", port, **settings, **common)
    elif kind == "sansio":
        config = uvicorn.Config(app, "127.0.0.1", port, ws="websockets-sansio", **common)
    else:
        raise SystemExit(f"unknown server kind {kind!r}")
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
