"""The HTTP request a handler receives: a read-only view of the scope and a bounded body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import cached_property
from typing import Any

import orjson

from nexios.datastructures import URL, Address, Headers, QueryParams, State, parse_cookies
from nexios.exceptions import HTTPException
from nexios.types import Message, Receive, Scope

__all__ = ["Request"]

_UNSET: Any = object()


async def _no_receive() -> Message:
    raise RuntimeError("This Request was built without a receive channel: it has no body to read.")


def _parse_content_type(value: str | None) -> tuple[str, dict[str, str]]:
    """``'text/plain; charset=UTF-8'`` -> ``('text/plain', {'charset': 'UTF-8'})``."""
    if not value:
        return "", {}
    media_type, *parts = value.split(";")
    params: dict[str, str] = {}
    for part in parts:
        name, _, param = part.partition("=")
        params[name.strip().lower()] = param.strip().strip('"')
    return media_type.strip().lower(), params


class Request:
    """One HTTP request.

    The body is read at most once and kept: ``body()``, ``text()``, ``json()`` and
    ``form()`` can be called in any order and as often as needed. ``body()`` refuses a
    body larger than ``max_body_size`` bytes (``None``: no limit) with a 413; set it on
    the class for every request, or on one request before reading its body.
    ``stream()`` yields the body as it arrives, unbounded and only once.
    """

    max_body_size: int | None = 1024 * 1024

    def __init__(self, scope: Scope, receive: Receive = _no_receive) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Request needs an 'http' scope, got {scope['type']!r}.")
        self.scope = scope
        self._receive = receive
        self._body: bytes | None = None
        self._streamed = False
        self._json: Any = _UNSET
        self._form: QueryParams | None = None

    @property
    def method(self) -> str:
        method: str = self.scope["method"]
        return method

    @cached_property
    def url(self) -> URL:
        return URL(scope=self.scope)

    @cached_property
    def headers(self) -> Headers:
        return Headers(scope=self.scope)

    @cached_property
    def query_params(self) -> QueryParams:
        return QueryParams(self.scope.get("query_string", b""))

    @property
    def path_params(self) -> dict[str, Any]:
        params: dict[str, Any] = self.scope.get("path_params", {})
        return params

    @cached_property
    def cookies(self) -> dict[str, str]:
        return parse_cookies(self.headers.get("cookie", ""))

    @property
    def client(self) -> Address | None:
        client = self.scope.get("client")
        return Address(*client) if client else None

    @cached_property
    def state(self) -> State:
        return State(self.scope.setdefault("state", {}))

    @property
    def app(self) -> Any:
        return self.scope.get("app")

    @property
    def receive(self) -> Receive:
        return self._receive

    async def stream(self) -> AsyncIterator[bytes]:
        """Yield the body in the chunks the server delivers. Not bounded by ``max_body_size``.

        After ``body()`` it yields the kept body; otherwise the body can be streamed once.
        """
        if self._body is not None:
            if self._body:
                yield self._body
            return
        if self._streamed:
            raise RuntimeError(
                "The request body was already read with request.stream(), which reads it once: "
                "call await request.body() instead if you need it more than once."
            )
        self._streamed = True
        while True:
            message = await self._receive()
            if message["type"] == "http.request":
                chunk: bytes = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return
            elif message["type"] == "http.disconnect":
                raise HTTPException(
                    400, "The client disconnected before the request body was complete."
                )

    async def body(self) -> bytes:
        if self._body is None:
            limit = self.max_body_size
            if limit is not None:
                declared = self.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise self._too_large(limit)
            chunks: list[bytes] = []
            size = 0
            async for chunk in self.stream():
                size += len(chunk)
                if limit is not None and size > limit:
                    raise self._too_large(limit)
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body

    @staticmethod
    def _too_large(limit: int) -> HTTPException:
        return HTTPException(413, f"Request body is larger than the limit of {limit} bytes.")

    async def text(self) -> str:
        body = await self.body()
        _, params = _parse_content_type(self.headers.get("content-type"))
        charset = params.get("charset") or "utf-8"
        try:
            return body.decode(charset)
        except (LookupError, UnicodeDecodeError):
            raise HTTPException(400, f"Request body is not valid {charset} text") from None

    async def json(self) -> Any:
        if self._json is _UNSET:
            body = await self.body()
            try:
                self._json = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise HTTPException(400, "Request body is not valid JSON") from None
        return self._json

    async def form(self) -> QueryParams:
        """The fields of an ``application/x-www-form-urlencoded`` body.

        Any other content type (multipart included) is refused with a 415.
        """
        if self._form is None:
            media_type, _ = _parse_content_type(self.headers.get("content-type"))
            if media_type == "multipart/form-data":
                raise HTTPException(
                    415,
                    "multipart/form-data is not supported: send the form as "
                    "application/x-www-form-urlencoded, or read request.stream() yourself.",
                )
            if media_type != "application/x-www-form-urlencoded":
                raise HTTPException(
                    415,
                    "Expected an application/x-www-form-urlencoded body, "
                    f"got {media_type or 'no content-type'}.",
                )
            self._form = QueryParams(await self.body())
        return self._form

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.method} {self.url})"
