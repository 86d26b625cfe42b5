"""The names of the ASGI scope extensions nexios' server offers (docs/asgi-extensions.md).

A leaf: the server sets them, the connection (`nexios.websockets`) and the test client
read them; none of them imports the others for these names.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CONTROL_EXTENSION",
    "DEFLATE_EXTENSION",
    "HALF_OPEN_EXTENSION",
    "HTTP_RESPONSE_EXTENSION",
    "SEND_NOWAIT_EXTENSION",
]

# App-sent pings and pongs, and control events for the app.
CONTROL_EXTENSION: Final = "nexios.websocket.control"
# permessage-deflate, chosen per connection at accept time.
DEFLATE_EXTENSION: Final = "nexios.websocket.permessage_deflate"
# A synchronous send for the channels' fan-out: written now, or nothing and False.
SEND_NOWAIT_EXTENSION: Final = "nexios.websocket.send_nowait"
# The ASGI spec's denial response (an HTTP answer instead of the handshake).
HTTP_RESPONSE_EXTENSION: Final = "websocket.http.response"
# The server's handshake counters, shared by every request.
HALF_OPEN_EXTENSION: Final = "nexios.server.half_open"
