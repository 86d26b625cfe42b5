"""Every exception nexios raises, under one root.

::

    NexiosError
    ├── HTTPException                 an HTTP handler's answer with a status code
    ├── WebSocketDisconnect           the peer closed (or the connection was lost)
    ├── WebSocketException            close the connection with this code and reason
    │   ├── WebSocketUnsupportedData  a text receive got binary, or the reverse (1003)
    │   └── WebSocketInvalidJSON      receive_json got a message that is not JSON (1007);
    │                                 also a json.JSONDecodeError
    ├── WebSocketStateError           a method called in the wrong connection state
    │                                 (also a RuntimeError)
    ├── WebSocketUnsupported          the ASGI server lacks what a method needs
    │                                 (also a RuntimeError)
    ├── NoMatchFound                  url_path_for found no route of that name
    └── ImproperlyConfigured          bad use of the framework at set-up time
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus

__all__ = [
    "HTTPException",
    "ImproperlyConfigured",
    "NexiosError",
    "NoMatchFound",
    "WebSocketDisconnect",
    "WebSocketException",
    "WebSocketInvalidJSON",
    "WebSocketStateError",
    "WebSocketUnsupported",
    "WebSocketUnsupportedData",
]


class NexiosError(Exception):
    """The root of every exception nexios raises."""


class HTTPException(NexiosError):
    def __init__(
        self,
        status_code: int,
        detail: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if detail is None:
            detail = HTTPStatus(status_code).phrase
        super().__init__(status_code, detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = dict(headers) if headers else None

    def __str__(self) -> str:
        return f"{self.status_code}: {self.detail}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code!r}, detail={self.detail!r})"


class WebSocketDisconnect(NexiosError):
    """The connection is closed: ``code`` and ``reason`` are the peer's (or 1006 if lost)."""

    def __init__(self, code: int = 1000, reason: str | None = None) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason or ""

    def __str__(self) -> str:
        return f"WebSocket closed with code {self.code}" + (
            f": {self.reason}" if self.reason else ""
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, reason={self.reason!r})"


class WebSocketException(NexiosError):
    """Raise it in a handler to close the connection with ``code`` and ``reason``.

    Before the handshake is accepted, the connection is refused instead.
    """

    def __init__(self, code: int = 1008, reason: str | None = None) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason or ""

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}" if self.reason else str(self.code)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, reason={self.reason!r})"


class WebSocketUnsupportedData(WebSocketException):
    """A message of the wrong type: text where bytes were expected, or the reverse."""

    def __init__(self, reason: str) -> None:
        super().__init__(1003, reason)


class WebSocketInvalidJSON(WebSocketException, json.JSONDecodeError):
    """A message that is not valid JSON, or not UTF-8, where JSON was expected.

    It is also a ``json.JSONDecodeError`` (and so a ``ValueError``), so
    ``except json.JSONDecodeError`` catches it.
    """

    def __init__(self, reason: str, doc: str = "", pos: int = 0) -> None:
        json.JSONDecodeError.__init__(self, reason, doc, pos)
        self.code = 1007
        self.reason = reason

    def __str__(self) -> str:
        return f"1007: {self.reason}"


class WebSocketStateError(NexiosError, RuntimeError):
    """A WebSocket method was called in a state that does not allow it."""


class WebSocketUnsupported(NexiosError, RuntimeError):
    """The ASGI server running the app does not offer what this method needs."""


class NoMatchFound(NexiosError, LookupError):
    """``url_path_for`` was given a name (or parameters) that no route has."""


class ImproperlyConfigured(NexiosError, ValueError):
    """The framework was set up wrongly; the message says how to fix it."""
