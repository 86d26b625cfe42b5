"""HTTP responses, each an ASGI app, and ``NexiosResponse``, the builder handlers are given."""

from __future__ import annotations

import asyncio
import copy
import mimetypes
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from http.cookies import SimpleCookie
from typing import Any, Literal
from urllib.parse import quote

import orjson

from nexios.datastructures import URL, Headers
from nexios.exceptions import HTTPException
from nexios.types import Receive, Scope, Send

__all__ = [
    "FileResponse",
    "HTMLResponse",
    "JSONResponse",
    "MutableHeaders",
    "NexiosResponse",
    "PlainTextResponse",
    "RedirectResponse",
    "Response",
    "http_exception_response",
]

SameSite = Literal["lax", "strict", "none"]


class MutableHeaders(Headers):
    """Response headers: ``Headers`` that can be changed.

    ``headers[name] = value`` replaces every field of that name; ``append`` adds one more
    (as ``Set-Cookie`` needs). Names are stored lower-cased.
    """

    __slots__ = ()

    def __setitem__(self, key: str, value: str) -> None:
        name = key.lower().encode("latin-1")
        self.raw = [(k, v) for k, v in self.raw if k != name]
        self.raw.append((name, value.encode("latin-1")))
        self._dict = None

    def __delitem__(self, key: str) -> None:
        name = key.lower().encode("latin-1")
        kept = [(k, v) for k, v in self.raw if k != name]
        if len(kept) == len(self.raw):
            raise KeyError(key)
        self.raw = kept
        self._dict = None

    def append(self, key: str, value: str) -> None:
        self.raw.append((key.lower().encode("latin-1"), value.encode("latin-1")))
        self._dict = None

    def setdefault(self, key: str, value: str) -> str:
        current = self.get(key)
        if current is None:
            self.append(key, value)
            return value
        return current

    def update(self, headers: Mapping[str, str]) -> None:
        for key, value in headers.items():
            self[key] = value


def _allows_body(status_code: int) -> bool:
    # RFC 9110 sections 6.4.1 and 8.6: 1xx, 204 and 304 responses have no content.
    return status_code >= 200 and status_code not in (204, 304)


def _cookie_header(
    key: str,
    value: str = "",
    max_age: int | None = None,
    expires: datetime | str | int | None = None,
    path: str | None = "/",
    domain: str | None = None,
    secure: bool = False,
    httponly: bool = False,
    samesite: SameSite | None = "lax",
) -> str:
    """The value of one ``Set-Cookie`` field (RFC 6265 section 4.1)."""
    cookie: SimpleCookie = SimpleCookie()
    cookie[key] = value
    morsel = cookie[key]
    if max_age is not None:
        morsel["max-age"] = str(max_age)
    if isinstance(expires, datetime):
        when = expires.replace(tzinfo=UTC) if expires.tzinfo is None else expires.astimezone(UTC)
        morsel["expires"] = format_datetime(when, usegmt=True)
    elif expires is not None:
        morsel["expires"] = expires  # an int is seconds from now
    if path is not None:
        morsel["path"] = path
    if domain is not None:
        morsel["domain"] = domain
    if secure:
        morsel["secure"] = True
    if httponly:
        morsel["httponly"] = True
    if samesite is not None:
        if samesite.lower() not in ("lax", "strict", "none"):
            raise ValueError(f"samesite must be 'lax', 'strict' or 'none', not {samesite!r}.")
        morsel["samesite"] = samesite.lower()
    return morsel.OutputString()


_EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"


class Response:
    """A complete response whose body is in memory.

    ``content-type`` (from ``media_type``, with a charset for ``text/*``) and
    ``content-length`` are set unless given in ``headers``. A ``HEAD`` request gets the
    headers only.
    """

    media_type: str | None = None
    charset = "utf-8"

    def __init__(
        self,
        content: Any = b"",
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        self.status_code = status_code
        if media_type is not None:
            self.media_type = media_type
        self.body = self.render(content)
        self.headers = MutableHeaders(headers=headers)
        raw = self.headers.raw
        given = {name for name, _ in raw}
        if self.media_type is not None and b"content-type" not in given:
            content_type = self.media_type
            if content_type.startswith("text/") and "charset=" not in content_type:
                content_type += f"; charset={self.charset}"
            raw.append((b"content-type", content_type.encode("latin-1")))
        if _allows_body(status_code) and b"content-length" not in given:
            raw.append((b"content-length", str(len(self.body)).encode("latin-1")))

    def render(self, content: Any) -> bytes:
        if content is None:
            return b""
        if isinstance(content, bytes):
            return content
        if isinstance(content, str):
            return content.encode(self.charset)
        if isinstance(content, bytearray | memoryview):
            return bytes(content)
        raise TypeError(
            f"{type(self).__name__} content must be bytes or str, not {type(content).__name__}: "
            "use JSONResponse for data."
        )

    def set_cookie(
        self,
        key: str,
        value: str = "",
        max_age: int | None = None,
        expires: datetime | str | int | None = None,
        path: str | None = "/",
        domain: str | None = None,
        secure: bool = False,
        httponly: bool = False,
        samesite: SameSite | None = "lax",
    ) -> None:
        self.headers.append(
            "set-cookie",
            _cookie_header(key, value, max_age, expires, path, domain, secure, httponly, samesite),
        )

    def delete_cookie(
        self,
        key: str,
        path: str | None = "/",
        domain: str | None = None,
        secure: bool = False,
        httponly: bool = False,
        samesite: SameSite | None = "lax",
    ) -> None:
        self.set_cookie(key, "", 0, _EPOCH, path, domain, secure, httponly, samesite)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.headers.raw}
        )
        with_body = scope.get("method") != "HEAD" and _allows_body(self.status_code)
        await send({"type": "http.response.body", "body": self.body if with_body else b""})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code})"


class HTMLResponse(Response):
    media_type = "text/html"


class PlainTextResponse(Response):
    media_type = "text/plain"


class JSONResponse(Response):
    """``content`` encoded once with orjson (dataclasses, datetimes and UUIDs included)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class RedirectResponse(Response):
    def __init__(
        self,
        url: str | URL,
        status_code: int = 307,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(b"", status_code, headers)
        # Percent-encode what a header cannot carry, keep what a URL may contain.
        self.headers["location"] = quote(str(url), safe=":/?#[]@!$&'()*+,;=%~")


class FileResponse(Response):
    """Stream a file from disk in chunks read by a worker thread.

    The file is opened when the response is sent; if it is missing then,
    ``FileNotFoundError`` is raised before anything is sent, and the router answers 404.
    """

    chunk_size = 64 * 1024

    def __init__(
        self,
        path: str | os.PathLike[str],
        filename: str | None = None,
        media_type: str | None = None,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.filename = filename
        self.status_code = status_code
        self.body = b""
        self.media_type = (
            media_type
            or mimetypes.guess_type(filename or self.path)[0]
            or "application/octet-stream"
        )
        self.headers = MutableHeaders(headers=headers)
        self.headers.setdefault("content-type", self.media_type)
        if filename is not None:
            self.headers.setdefault("content-disposition", _content_disposition(filename))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            file = await asyncio.to_thread(open, self.path, "rb")
        except IsADirectoryError:
            raise FileNotFoundError(f"{self.path!r} is a directory, not a file.") from None
        try:
            size = os.fstat(file.fileno()).st_size
            headers = self.headers.raw
            if "content-length" not in self.headers and _allows_body(self.status_code):
                headers = [*headers, (b"content-length", str(size).encode("latin-1"))]
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": headers}
            )
            if scope.get("method") == "HEAD" or not _allows_body(self.status_code):
                await send({"type": "http.response.body", "body": b""})
                return
            while True:
                chunk = await asyncio.to_thread(file.read, self.chunk_size)
                more = len(chunk) == self.chunk_size
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
                if not more:
                    return
        finally:
            file.close()


def _content_disposition(filename: str) -> str:
    # RFC 6266 section 4.3: a plain quoted filename, or filename* (RFC 8187) otherwise.
    if filename.isascii() and filename.isprintable() and not any(c in filename for c in '"\\'):
        return f'attachment; filename="{filename}"'
    return f"attachment; filename*=utf-8''{quote(filename, safe='')}"


def http_exception_response(exc: HTTPException) -> Response:
    """The answer to an ``HTTPException``: ``{"detail": ...}`` with its status and headers."""
    if not _allows_body(exc.status_code):
        return Response(b"", exc.status_code, exc.headers)
    return JSONResponse({"detail": exc.detail}, exc.status_code, exc.headers)


_EMPTY = Response()


class NexiosResponse:
    """The response builder a handler gets as its second argument.

    Every method returns the builder, so calls chain and the handler can return the
    result: ``return response.status(201).set_header("x-id", "7").json(item)``. The body
    methods (``json``, ``text``, ``html``, ``binary``, ``file``, ``redirect``, ``empty``)
    replace the body; the status, headers and cookies set on the builder are kept, and
    its headers win over the body's own (``content-type`` and the like). A body method
    without ``status_code`` keeps the current status (200 unless ``status()`` said
    otherwise). Sent as an ASGI app, the builder sends what it holds: by default an empty
    200.
    """

    __slots__ = ("_content", "_headers", "_status_code")

    def __init__(self) -> None:
        self._content: Response = _EMPTY  # shared: the builder never changes its content
        self._headers = MutableHeaders()
        self._status_code = 200

    @property
    def status_code(self) -> int:
        return self._status_code

    @status_code.setter
    def status_code(self, code: int) -> None:
        self._status_code = code

    @property
    def headers(self) -> MutableHeaders:
        """The headers set on the builder (the body's own are added when it is sent)."""
        return self._headers

    @property
    def body(self) -> bytes:
        """The body as it stands (empty for a file, which is read when sent)."""
        return self._content.body

    def _set(
        self, content: Response, status_code: int | None, headers: Mapping[str, str] | None
    ) -> NexiosResponse:
        self._content = content
        if status_code is not None:
            self._status_code = status_code
        if headers:
            self._headers.update(headers)
        return self

    def json(
        self, data: Any, status_code: int | None = None, headers: Mapping[str, str] | None = None
    ) -> NexiosResponse:
        return self._set(JSONResponse(data), status_code, headers)

    def text(
        self, content: str, status_code: int | None = None, headers: Mapping[str, str] | None = None
    ) -> NexiosResponse:
        return self._set(PlainTextResponse(content), status_code, headers)

    def html(
        self, content: str, status_code: int | None = None, headers: Mapping[str, str] | None = None
    ) -> NexiosResponse:
        return self._set(HTMLResponse(content), status_code, headers)

    def binary(
        self,
        content: bytes,
        status_code: int | None = None,
        headers: Mapping[str, str] | None = None,
        media_type: str = "application/octet-stream",
    ) -> NexiosResponse:
        return self._set(Response(content, media_type=media_type), status_code, headers)

    def file(
        self,
        path: str | os.PathLike[str],
        filename: str | None = None,
        media_type: str | None = None,
        status_code: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> NexiosResponse:
        return self._set(FileResponse(path, filename, media_type), status_code, headers)

    def redirect(self, url: str | URL, status_code: int = 307) -> NexiosResponse:
        return self._set(RedirectResponse(url), status_code, None)

    def empty(
        self, status_code: int = 204, headers: Mapping[str, str] | None = None
    ) -> NexiosResponse:
        return self._set(Response(b""), status_code, headers)

    def status(self, code: int) -> NexiosResponse:
        self._status_code = code
        return self

    def set_header(self, name: str, value: str) -> NexiosResponse:
        self._headers[name] = value
        return self

    def set_cookie(
        self,
        key: str,
        value: str = "",
        max_age: int | None = None,
        expires: datetime | str | int | None = None,
        path: str | None = "/",
        domain: str | None = None,
        secure: bool = False,
        httponly: bool = False,
        samesite: SameSite | None = "lax",
    ) -> NexiosResponse:
        self._headers.append(
            "set-cookie",
            _cookie_header(key, value, max_age, expires, path, domain, secure, httponly, samesite),
        )
        return self

    def delete_cookie(
        self,
        key: str,
        path: str | None = "/",
        domain: str | None = None,
        secure: bool = False,
        httponly: bool = False,
        samesite: SameSite | None = "lax",
    ) -> NexiosResponse:
        return self.set_cookie(key, "", 0, _EPOCH, path, domain, secure, httponly, samesite)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        final = copy.copy(self._content)
        final.status_code = self._status_code
        mine = {name for name, _ in self._headers.raw if name != b"set-cookie"}
        if not _allows_body(self._status_code):
            mine.add(b"content-length")
        final.headers = MutableHeaders(
            [(k, v) for k, v in self._content.headers.raw if k not in mine] + self._headers.raw
        )
        await final(scope, receive, send)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self._status_code}, content={self._content!r})"
