"""Origins (RFC 6454), parsed and compared: what ``allowed_origins`` admits."""

from __future__ import annotations

import functools
import re
from typing import Final

__all__ = ["origin_allowed", "parse_origin"]


def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    """Whether a request's ``Origin`` is one of ``allowed``: ``"*"``, an origin, or an
    origin whose host starts with a ``*.`` label (``"https://*.example.com"``).

    Both sides are parsed (scheme, host, port; RFC 6454 section 7) and compared as
    such: a wildcard stands for one or more whole labels of the host, so
    ``https://evil.com/.example.com`` (not an origin: it has a path) and
    ``https://example.com.evil.com`` do not match ``https://*.example.com``.
    """
    if "*" in allowed:
        return True
    parsed = parse_origin(origin)
    if parsed is None:  # "null" (RFC 6454 section 7.3), or not an origin at all
        return False
    scheme, host, port = parsed
    for pattern in allowed:
        want = parse_origin(pattern, wildcard=True)
        if want is None or want[0] != scheme or want[2] != port:
            continue
        if want[1] == host or (want[1].startswith("*.") and host.endswith(want[1][1:])):
            return True
    return False


_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_SCHEME: Final = re.compile(r"[a-z][a-z0-9+.-]*")
_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
_IPV6: Final = re.compile(r"\[[0-9a-f:.]+\]")


@functools.lru_cache(maxsize=512)
def parse_origin(text: str, *, wildcard: bool = False) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an origin as browsers send it (``scheme://host[:port]``,
    RFC 6454 section 6.2; a lone trailing ``/`` is tolerated), lowercased, with the
    scheme's default port filled in; None if *text* is not one. With *wildcard*, the
    host may start with one ``*.`` label (an ``allowed_origins`` pattern)."""
    scheme, sep, rest = text.strip().lower().partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return None
    if rest.endswith("/"):
        rest = rest[:-1]
    host, port_text = rest, ""
    if not rest.startswith("["):
        host, _, port_text = rest.partition(":")
    elif "]:" in rest:
        host, _, port_text = rest.rpartition(":")
    if port_text:
        if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
            return None
        port = int(port_text)
    else:
        port = _DEFAULT_PORTS.get(scheme, 0)
    if _IPV6.fullmatch(host):
        return scheme, host, port
    labels = host.split(".")
    if wildcard and labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    if not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return scheme, host, port
