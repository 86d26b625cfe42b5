"""The echo server the Autobahn conformance run drives (see docs/conformance.md).

    python scripts/autobahn_echo.py [PORT]      # or PORT=9001 python scripts/autobahn_echo.py

Every message comes back as it came in: text as text, bytes as bytes, through
``ws.receive()``, so the run tests nexios' WebSocket protocol and the ``WebSocket`` class,
not a shortcut around them. The settings differ from ``WebSocketConfig()``'s defaults where
the suite needs it:

- ``compression=True``: cases 12.x and 13.x test permessage-deflate (RFC 7692); without it
  the server declines the client's offer and those cases report UNIMPLEMENTED.
- ``max_message_size=16 MiB``: cases 9.1.6 and 9.2.6 send one 16 MiB message (the largest
  in the suite; websockets accepts a message of exactly ``max_size`` bytes). The default,
  1 MiB, would close with 1009, and so fail, every case with a larger message: 9.1.4-9.1.6,
  9.2.4-9.2.6, and all of 9.3 and 9.4 (4 MiB messages in fragments).
- ``max_fragments=65536``: 9.3.1 and 9.4.1 send a 4 MiB message in 64-byte fragments,
  65,536 frames. The default, 4,096 (websockets' own server stops at the same number),
  would close both with 1009.
- ``ping_interval=None``: Autobahn compares every frame the server sends against the case's
  expectation, so a keepalive Ping that happens to fall inside a long case (9.x runs for
  seconds) would be an unexpected event. The keepalive is tested elsewhere.
"""

from __future__ import annotations

import os
import sys

from nexios import NexiosApp, WebSocket, WebSocketConfig, WebSocketDisconnect

MAX_MESSAGE_SIZE = 16 * 1024 * 1024
MAX_FRAGMENTS = 4 * 1024 * 1024 // 64

app = NexiosApp(
    title="nexios autobahn echo",
    websocket_config=WebSocketConfig(
        compression=True,
        max_message_size=MAX_MESSAGE_SIZE,
        max_fragments=MAX_FRAGMENTS,
        ping_interval=None,
    ),
)


@app.ws_route("/")
async def echo(ws: WebSocket) -> None:
    await ws.accept()
    try:
        while True:
            message = await ws.receive()
            text = message.get("text")
            if text is not None:
                await ws.send_text(text)
            else:
                await ws.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        pass


def main() -> None:
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PORT", "9001"))
    # Access logs for 500+ connections would drown the run's output.
    app.run(host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
