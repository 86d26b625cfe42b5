"""Read-only views of the ASGI scope: headers, query parameters, URL, cookies; and State."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple, overload
from urllib.parse import SplitResult, parse_qsl, quote, urlencode, urlsplit

from nexios.types import Scope

__all__ = ["URL", "Address", "Headers", "QueryParams", "State", "parse_cookies"]


class Address(NamedTuple):
    host: str
    port: int


class Headers:
    """The handshake's headers, case-insensitive.

    ``get``, ``[]``, ``in``, ``keys``, ``values``, ``items`` and ``getlist`` work on
    ``str``; iterating yields the raw ``(name, value)`` byte pairs of the scope, in
    order, so ``{k.decode(): v.decode() for k, v in ws.headers}`` works as seed 001 shows.
    """

    __slots__ = ("_dict", "raw")

    def __init__(
        self,
        raw: Sequence[tuple[bytes, bytes]] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        scope: Scope | None = None,
    ) -> None:
        if scope is not None:
            raw = scope["headers"]
        elif headers is not None:
            raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.raw: list[tuple[bytes, bytes]] = list(raw or ())
        self._dict: dict[str, str] | None = None

    def _mapping(self) -> dict[str, str]:
        if self._dict is None:
            mapping: dict[str, str] = {}
            for key, value in self.raw:
                name = key.decode("latin-1").lower()
                text = value.decode("latin-1")
                # RFC 9110 section 5.3: repeated fields combine with a comma.
                mapping[name] = f"{mapping[name]}, {text}" if name in mapping else text
            self._dict = mapping
        return self._dict

    @overload
    def get(self, key: str) -> str | None: ...
    @overload
    def get(self, key: str, default: str) -> str: ...
    @overload
    def get(self, key: str, default: Any) -> Any: ...
    def get(self, key: str, default: Any = None) -> Any:
        return self._mapping().get(key.lower(), default)

    def getlist(self, key: str) -> list[str]:
        name = key.lower()
        return [v.decode("latin-1") for k, v in self.raw if k.decode("latin-1").lower() == name]

    def __getitem__(self, key: str) -> str:
        return self._mapping()[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._mapping()

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def keys(self) -> list[str]:
        return list(self._mapping())

    def values(self) -> list[str]:
        return list(self._mapping().values())

    def items(self) -> list[tuple[str, str]]:
        return list(self._mapping().items())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return sorted(self.raw) == sorted(other.raw)
        if isinstance(other, Mapping):
            return self._mapping() == {str(k).lower(): v for k, v in other.items()}
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"


class QueryParams(Mapping[str, str]):
    """The query string, decoded. ``str()`` gives it back as it was sent.

    ``qp["k"]`` and ``qp.get("k")`` give the last value of a repeated key;
    ``getlist("k")`` gives all of them.
    """

    __slots__ = ("_dict", "_list", "_text")

    def __init__(
        self, query: str | bytes | Mapping[str, str] | Sequence[tuple[str, str]] = ""
    ) -> None:
        if isinstance(query, bytes):
            query = query.decode("latin-1")
        if isinstance(query, str):
            self._text = query
            self._list = parse_qsl(query, keep_blank_values=True)
        else:
            items = list(query.items()) if isinstance(query, Mapping) else list(query)
            self._list = [(str(k), str(v)) for k, v in items]
            self._text = urlencode(self._list)
        self._dict = dict(self._list)

    def __getitem__(self, key: str) -> str:
        return self._dict[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict)

    def __len__(self) -> int:
        return len(self._dict)

    def getlist(self, key: str) -> list[str]:
        return [v for k, v in self._list if k == key]

    def multi_items(self) -> list[tuple[str, str]]:
        return list(self._list)

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"QueryParams({self._text!r})"


_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]+)(?::([0-9]{1,5}))?")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _valid_netloc(host: str) -> bool:
    found = _HOST.fullmatch(host)
    return found is not None and (found.group(2) is None or int(found.group(2)) <= 65535)


class URL:
    """A parsed URL. Built from a scope, it is the URL the client asked for.

    The ``Host`` header names the host, unless it is missing or not a valid host (any
    client can send anything there): then the server's own address does.
    """

    __slots__ = ("fragment", "netloc", "path", "query", "scheme")

    def __init__(self, url: str = "", *, scope: Scope | None = None) -> None:
        if scope is None:
            try:
                parts = urlsplit(url)
            except ValueError:  # e.g. an unbalanced "[" in the netloc
                parts = SplitResult("", "", url, "", "")
            self.scheme, self.netloc, self.path = parts.scheme, parts.netloc, parts.path
            self.query, self.fragment = parts.query, parts.fragment
            return
        self.scheme = scheme = scope.get("scheme", "http")
        # The path as the client sent it (percent-encoded); "path" is decoded. Both
        # already start with "root_path" (ASGI, uvicorn >= 0.26).
        raw_path = scope.get("raw_path")
        self.path = raw_path.decode("latin-1") if raw_path else quote(scope["path"])
        self.query = scope.get("query_string", b"").decode("latin-1")
        self.fragment = ""
        host = ""
        for key, value in scope["headers"]:
            if key == b"host":
                host = value.decode("latin-1").strip()
                break
        if not _valid_netloc(host):
            host = ""
            server = scope.get("server")
            if server:
                server_host, server_port = server
                if ":" in server_host:
                    server_host = f"[{server_host}]"  # an IPv6 address
                default = _DEFAULT_PORTS.get(scheme)
                host = (
                    server_host
                    if server_port in (default, None)
                    else f"{server_host}:{server_port}"
                )
        self.netloc = host

    @property
    def hostname(self) -> str | None:
        netloc = self.netloc.rpartition("@")[2]
        if netloc.startswith("["):
            return netloc[1 : netloc.find("]")].lower() or None
        return netloc.partition(":")[0].lower() or None

    @property
    def port(self) -> int | None:
        """The port in the URL, or None if it names none (or not a valid one)."""
        netloc = self.netloc.rpartition("@")[2]
        _, sep, port = netloc.rpartition("]:" if netloc.startswith("[") else ":")
        if not sep or not port.isdigit() or int(port) > 65535:
            return None
        return int(port)

    @property
    def is_secure(self) -> bool:
        return self.scheme in ("https", "wss")

    def replace(self, **kwargs: Any) -> URL:
        parts = SplitResult(self.scheme, self.netloc, self.path, self.query, self.fragment)
        return URL(parts._replace(**kwargs).geturl())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, URL | str):
            return str(self) == str(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(str(self))

    def __str__(self) -> str:
        text = f"{self.scheme}://{self.netloc}{self.path}" if self.scheme else self.path
        if self.netloc and not self.scheme:
            text = f"//{self.netloc}{self.path}"
        if self.query:
            text += "?" + self.query
        if self.fragment:
            text += "#" + self.fragment
        return text

    def __repr__(self) -> str:
        return f"URL({str(self)!r})"


class State:
    """Storage that works both ways: ``state.user = u`` and ``state["user"] = u``.

    Reading a name that was never set raises ``AttributeError`` (or ``KeyError`` with
    ``[]``); ``state.get(name, default)`` does not.
    """

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        object.__setattr__(self, "_data", {} if data is None else data)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(
                f"State has no {name!r}: set it first (state.{name} = ...) "
                f"or read it with state.get({name!r})."
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self._data[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self._data[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._data[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._data[name] = value

    def __delitem__(self, name: str) -> None:
        del self._data[name]

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def get(self, name: str, default: Any = None) -> Any:
        return self._data.get(name, default)

    def setdefault(self, name: str, default: Any = None) -> Any:
        return self._data.setdefault(name, default)

    def pop(self, name: str, *default: Any) -> Any:
        return self._data.pop(name, *default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._data.update(*args, **kwargs)

    def keys(self) -> list[str]:
        return list(self._data)

    def items(self) -> list[tuple[str, Any]]:
        return list(self._data.items())

    def clear(self) -> None:
        self._data.clear()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"


def parse_cookies(header: str) -> dict[str, str]:
    """Parse a ``Cookie`` header leniently, the way browsers send it (RFC 6265 section 5.4).

    Pairs without ``=`` are kept with an empty name, as browsers do; surrounding double
    quotes are removed; a later duplicate name wins.
    """
    cookies: dict[str, str] = {}
    for chunk in header.split(";"):
        if "=" in chunk:
            name, value = chunk.split("=", 1)
        else:
            name, value = "", chunk
        name, value = name.strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if name or value:
            cookies[name] = value
    return cookies
