"""The app ``tests/test_hardening_handshake.py`` serves in a process of its own.

``python tests/hardening_app.py PORT HTTP`` serves it with ``app.run`` (``HTTP``:
``httptools`` or ``h11``) on 127.0.0.1:PORT. From the environment:

* ``NEXIOS_TEST_CONFIG``: the app's ``WebSocketConfig`` fields, as a JSON object; a field
  this version of nexios does not have is left out (and said so on stderr), so the same
  test runs against older code and shows what it did;
* ``NEXIOS_TEST_NOFILE``: the process's soft limit of open files (``ulimit -n``).

Routes: ``WS /ws`` echoes text; ``GET /health`` answers ``ok``; ``GET /stats`` answers the
server's handshake counters (the ``nexios.server.half_open`` scope extension), or ``{}``
without it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
from typing import Any

from nexios import NexiosApp, WebSocket, WebSocketConfig
from nexios.http.request import Request

EXTENSION = "nexios.server.half_open"


def build(config: WebSocketConfig) -> NexiosApp:
    app = NexiosApp(websocket_config=config)

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        async for text in ws.iter_text():
            await ws.send_text(text)

    app.add_ws_route("/ws", echo)

    @app.get("/health")
    async def health(request: Request) -> str:
        return "ok"

    @app.get("/stats")
    async def stats(request: Request) -> dict[str, Any]:
        extension = (request.scope.get("extensions") or {}).get(EXTENSION)
        if extension is None:
            return {}
        return {"half_open": extension["half_open"](), **extension["stats"]()}

    return app


def config_from(fields: dict[str, Any]) -> WebSocketConfig:
    known = {field.name for field in dataclasses.fields(WebSocketConfig)}
    for name in sorted(set(fields) - known):
        print(f"[hardening_app] WebSocketConfig has no field {name!r}: left out", file=sys.stderr)
    return WebSocketConfig(**{k: v for k, v in fields.items() if k in known})


def main() -> None:
    port, http = int(sys.argv[1]), sys.argv[2]
    nofile = os.environ.get("NEXIOS_TEST_NOFILE")
    if nofile:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(nofile), hard))
    config = config_from(json.loads(os.environ.get("NEXIOS_TEST_CONFIG", "{}")))
    build(config).run("127.0.0.1", port, http=http, log_level="info")


if __name__ == "__main__":
    main()
