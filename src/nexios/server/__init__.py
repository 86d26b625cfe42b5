"""The nexios server: uvicorn with a WebSocket protocol that speaks the nexios ASGI
extensions (docs/asgi-extensions.md).

- `protocol`: `NexiosWebSocketProtocol`, the subclass of uvicorn's sans-I/O protocol;
- `http`: the HTTP protocols that guard the handshake (half-open connections, limits);
- `frames`: RFC 6455 frame headers, for frames built once per broadcast;
- `extensions`: the scope extension names (a leaf the connection and test client read).

`make_config` and `run` are imported lazily: reading an extension name does not load
uvicorn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nexios.server.protocol import (
        NexiosWebSocketProtocol,
        ProcessServer,
        ServerConfig,
        make_config,
        run,
    )

__all__ = ["NexiosWebSocketProtocol", "ProcessServer", "ServerConfig", "make_config", "run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from nexios.server import protocol

        return getattr(protocol, name)
    raise AttributeError(f"module 'nexios.server' has no attribute {name!r}")
