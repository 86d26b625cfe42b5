"""Property-based tests (hypothesis) of what parses client input, in process.

* the path compiler (``nexios.routing.paths``): a formatted path matches back to the same
  converted parameters, for every convertor; ``match``/``match_prefix`` of any string
  only ever return None or the parameters; a template is compiled or refused with
  ``ImproperlyConfigured``, nothing else; the app's WebSocket router never raises on a
  path;
* ``QueryParams``, ``Headers``, ``parse_cookies`` and ``URL(scope=...)`` on arbitrary
  input;
* the WebSocket decoders, through ``nexios.testing.TestClient``: a message given to
  ``receive_json()`` (a handler, or a consumer with ``encoding = "json"``) is the value
  ``json.loads`` gives or the connection closes with 1007; ``receive_text()`` on bytes
  closes with 1003. Never a 1011, never an exception out of the app (the TestClient
  re-raises those).

What hypothesis found that is wrong is pinned by the ``xfail(strict=True)`` tests at the
end of each section, with the smallest example; the properties above them leave those
inputs out (and say so) so that they keep guarding everything else.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from nexios import NexiosApp, WebSocket
from nexios.datastructures import URL, Headers, QueryParams, parse_cookies
from nexios.exceptions import ImproperlyConfigured
from nexios.routing.paths import CompiledPath, compile_path
from nexios.testing import TestClient, WebSocketDisconnect
from nexios.websocket.consumer import WebSocketEndpoint

# Fast and deterministic enough for CI: a few hundred examples per property, no deadline
# (the first example pays for imports and the TestClient's thread), no health check
# about slow data generation (the path templates are built from several strategies).
FAST = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
# Each example of these opens a WebSocket session through the TestClient.
SESSIONS = settings(FAST, max_examples=200)

# Text that a str can hold and UTF-8 can encode (no lone surrogates): what arrives from a
# real client is always such text.
TEXT = st.characters(blacklist_categories=("Cs",))
INT64 = 2**63


# ------------------------------------------------------------------------------ paths

# Literal text inside a path segment: anything but "/", braces ("{" starts a parameter,
# "}" could close one) and "\n" (see test_a_newline_*, below), regex metacharacters
# included.
LITERAL = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/{}\n"),
    min_size=1,
    max_size=6,
)
NAMES = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True)

# Values each convertor can write into a path and read back unchanged.
SEGMENT_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\n"),
    min_size=1,
    max_size=12,
)
# Floats below 1e-4 lose digits (see test_a_tiny_float_*); up to 1e300 they do not.
FLOATS = st.one_of(
    st.just(0.0),
    st.floats(min_value=1e-4, max_value=1e300, allow_nan=False, allow_infinity=False),
)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "str": SEGMENT_TEXT,
    "int": st.integers(min_value=0, max_value=10**30),
    "float": FLOATS,
    "uuid": st.uuids(),
    # The rest of the path: slashes included, possibly empty.
    "path": st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"),
        max_size=20,
    ),
}


@st.composite
def templates(
    draw: st.DrawFn, *, allow_path: bool = True
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """A template of whole segments ("/lit", "/{p}", "/pre{p:int}.suf", and "/{rest:path}"
    last), parameter values for it, and each parameter's convertor.

    A segment holds at most one parameter: two in one segment ("/{a}{b}") split the text
    ambiguously, which no convertor can undo. With one, the split is unique (no value but
    the path's and no literal holds a "/"), whatever the literals around the parameter.
    """
    count = draw(st.integers(min_value=0, max_value=5))
    names = draw(st.lists(NAMES, min_size=count, max_size=count, unique=True))
    parts: list[str] = []
    params: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    segment_kinds = ["str", "int", "float", "uuid"]
    for index, name in enumerate(names):
        last = index == len(names) - 1
        if draw(st.booleans()):
            parts.append("/" + draw(LITERAL))
        kind = draw(
            st.sampled_from([*segment_kinds, "path"] if allow_path and last else segment_kinds)
        )
        if kind == "path":
            parts.append("/{" + name + ":path}")
        else:
            before = draw(st.one_of(st.just(""), LITERAL))
            after = draw(st.one_of(st.just(""), LITERAL))
            spec = name if kind == "str" and draw(st.booleans()) else f"{name}:{kind}"
            parts.append(f"/{before}{{{spec}}}{after}")
        params[name] = draw(VALUES[kind])
        kinds[name] = kind
    # A literal after "{rest:path}" would be swallowed by it: the path stays last.
    ends_with_path = bool(kinds) and list(kinds.values())[-1] == "path"
    if not parts or (not ends_with_path and draw(st.booleans())):
        parts.append("/" + draw(LITERAL))
    return "".join(parts), params, kinds


def expected(kind: str, value: Any) -> Any:
    """The value a match gives back for ``value`` (floats come back as floats)."""
    return float(value) if kind == "float" else value


@FAST
@given(templates())
def test_a_formatted_path_matches_back_to_its_parameters(
    case: tuple[str, dict[str, Any], dict[str, str]],
) -> None:
    template, params, kinds = case
    compiled = compile_path(template)
    path = compiled.format_path(params)
    assert compiled.match(path) == {name: expected(kinds[name], v) for name, v in params.items()}
    # Matched values are of the convertor's type.
    for name, value in (compiled.match(path) or {}).items():
        assert isinstance(
            value, {"int": int, "float": float, "uuid": uuid.UUID}.get(kinds[name], str)
        )


@FAST
@given(templates(allow_path=False), st.sampled_from(["", "/", "/x", "/x/y/", "//"]))
def test_a_formatted_prefix_matches_with_the_rest(
    case: tuple[str, dict[str, Any], dict[str, str]], rest: str
) -> None:
    template, params, kinds = case
    compiled = compile_path(template, prefix=True)
    head = compiled.format_path(params)
    found = compiled.match_prefix(head + rest)
    assert found is not None, (head, rest, compiled.regex.pattern)
    assert found == ({name: expected(kinds[name], v) for name, v in params.items()}, rest)
    # A prefix matches whole segments only: text glued to its last segment is no match,
    # unless a parameter at the end absorbs it.
    if not template.endswith("}"):
        assert compiled.match_prefix(head + "x" + rest) is None


@FAST
@given(templates(), st.text(alphabet=TEXT, max_size=40))
def test_match_of_any_path_returns_none_or_the_parameters(
    case: tuple[str, dict[str, Any], dict[str, str]], path: str
) -> None:
    compiled = compile_path(case[0])
    prefix = compile_path(case[0], prefix=True)
    for candidate in (path, "/" + path, compiled.format_path(case[1]) + path):
        found = compiled.match(candidate)
        assert found is None or set(found) == set(case[2])
        found_prefix = prefix.match_prefix(candidate)
        if found_prefix is not None:
            params, rest = found_prefix
            assert set(params) == set(case[2])
            assert rest == "" or rest.startswith("/")
            assert candidate.endswith(rest)


@FAST
@given(st.text(alphabet=TEXT, max_size=30), st.booleans())
def test_any_template_compiles_or_is_refused_with_improperly_configured(
    template: str, prefix: bool
) -> None:
    for candidate in (template, "/" + template):
        try:
            compiled = compile_path(candidate, prefix=prefix)
        except ImproperlyConfigured:
            continue
        assert isinstance(compiled, CompiledPath)
        # Whatever compiled also matches (or not) without raising.
        assert compiled.match(candidate) is None or isinstance(compiled.match(candidate), dict)


@FAST
@given(st.text(alphabet=TEXT, max_size=40))
def test_the_websocket_router_never_raises_on_a_path(path: str) -> None:
    for candidate in (path, "/" + path, "/rooms/" + path, "/api/v1/" + path):
        found = ROUTED.ws_router.match(candidate)
        if found is not None:
            route, params, chain = found
            assert route in [r for _, r in ROUTED.ws_router.iter_routes()]
            assert isinstance(params, dict)
            assert chain[0] is ROUTED.ws_router


def _routed_app() -> NexiosApp:
    from nexios import WSRouter

    app = NexiosApp()

    async def handler(ws: WebSocket) -> None:
        await ws.accept()

    app.add_ws_route("/rooms/{room}", handler)
    app.add_ws_route("/files/{rest:path}", handler)
    api = WSRouter(prefix="/api/{version:int}")
    api.add_ws_route("/v{n:float}/{u:uuid}", handler)
    api.add_ws_route("/", handler)
    app.mount_ws_router(api)
    return app


ROUTED = _routed_app()


# What the properties above leave out.


def test_a_newline_after_the_template_is_no_match() -> None:
    assert compile_path("/chat").match("/chat\n") is None
    assert compile_path("/rooms/{id:int}").match("/rooms/5\n") is None


def test_a_newline_inside_a_path_parameter_is_kept() -> None:
    files = compile_path("/files/{rest:path}")
    assert files.match(files.format_path({"rest": "a\nb"})) == {"rest": "a\nb"}
    assert files.match("/files/a\n") == {"rest": "a\n"}


def test_a_tiny_float_round_trips() -> None:
    compiled = compile_path("/r/{f:float}")
    for value in (1e-21, 1.2345678901234567e-7):
        assert compiled.match(compiled.format_path({"f": value})) == {"f": value}


def test_a_float_segment_too_large_is_no_match() -> None:
    assert compile_path("/r/{f:float}").match("/r/" + "9" * 400) is None


# ------------------------------------------------------------------------ QueryParams


@FAST
@given(st.text(alphabet=TEXT, max_size=60))
def test_query_params_of_any_string(query: str) -> None:
    params = QueryParams(query)
    assert str(params) == query
    items = params.multi_items()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in items)
    for key in params:
        assert params[key] == params.getlist(key)[-1] == params.get(key)
    assert set(params) == {k for k, _ in items}
    assert len(params) == len({k for k, _ in items})


@FAST
@given(st.binary(max_size=60))
def test_query_params_of_any_bytes(query: bytes) -> None:
    params = QueryParams(query)
    # The scope's query_string, as it came: latin-1 keeps every byte.
    assert str(params) == query.decode("latin-1")
    assert str(params).encode("latin-1") == query
    for key in params:
        assert params[key] == params.getlist(key)[-1]


@FAST
@given(st.lists(st.tuples(st.text(alphabet=TEXT, max_size=8), st.text(alphabet=TEXT, max_size=8))))
def test_query_params_from_pairs_round_trip_through_their_string(
    pairs: list[tuple[str, str]],
) -> None:
    params = QueryParams(pairs)
    assert params.multi_items() == pairs
    again = QueryParams(str(params))
    assert again.multi_items() == pairs
    assert str(again) == str(params)


# ---------------------------------------------------------------------------- Headers

ASCII_NAME = st.binary(max_size=12).map(lambda b: bytes(c & 0x7F for c in b))
HEADER_PAIRS = st.lists(st.tuples(ASCII_NAME, st.binary(max_size=20)), max_size=8)


def casings(name: str) -> Iterator[str]:
    yield name
    yield name.lower()
    yield name.upper()
    yield name.swapcase()


@FAST
@given(HEADER_PAIRS)
def test_headers_of_any_byte_pairs(raw: list[tuple[bytes, bytes]]) -> None:
    headers = Headers(raw)
    same = Headers(scope={"type": "websocket", "headers": raw})
    # Iteration gives the raw pairs, in order.
    assert list(headers) == raw == list(same)
    assert len(headers) == len(raw)
    assert headers == same
    assert headers == Headers(list(reversed(raw)))
    for name, _ in raw:
        text = name.decode("latin-1")
        values = [v.decode("latin-1") for k, v in raw if k.lower() == name.lower()]
        for spelled in casings(text):
            # Case-insensitive, repeated fields combined with ", " (RFC 9110 5.3).
            assert headers.get(spelled) == ", ".join(values)
            assert headers[spelled] == ", ".join(values)
            assert headers.getlist(spelled) == values
            assert spelled in headers
    assert set(headers.keys()) == {k.decode("latin-1").lower() for k, _ in raw}
    assert dict(headers.items()) == {k: headers.get(k) for k in headers.keys()}  # noqa: SIM118


@FAST
@given(HEADER_PAIRS, st.text(alphabet=TEXT, max_size=10))
def test_headers_lookup_of_any_name(raw: list[tuple[bytes, bytes]], name: str) -> None:
    headers = Headers(raw)
    assume(all(ord(c) < 128 for c in name))
    value = headers.get(name)
    assert (value is not None) == (name in headers)
    assert (value is None) == (headers.getlist(name) == [])
    assert headers.get(name, "default") == (value if value is not None else "default")


def test_getlist_agrees_with_get_on_non_ascii_names() -> None:
    headers = Headers([(b"\xc0", b"v")])  # "À" in latin-1
    assert headers.get("À") == "v"
    assert headers.getlist("À") == ["v"]
    assert Headers([]).getlist("€") == []


# ---------------------------------------------------------------------------- cookies

COOKIE_NAME = st.from_regex(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]{1,10}", fullmatch=True)
COOKIE_VALUE = st.from_regex(r"[A-Za-z0-9!#$%&'()*+\-./:<=>?@\[\]^_`{|}~]{0,12}", fullmatch=True)


@FAST
@given(st.text(alphabet=TEXT, max_size=80))
def test_parse_cookies_of_any_string(header: str) -> None:
    cookies = parse_cookies(header)
    assert isinstance(cookies, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in cookies.items())
    # Names and values come stripped; no name or value holds the separator.
    for name, value in cookies.items():
        assert name == name.strip()
        assert ";" not in name
        assert ";" not in value


@FAST
@given(st.lists(st.tuples(COOKIE_NAME, COOKIE_VALUE), min_size=1, max_size=6), st.booleans())
def test_parse_cookies_reads_back_what_a_browser_sends(
    pairs: list[tuple[str, str]], quoted: bool
) -> None:
    header = "; ".join(f'{k}="{v}"' if quoted else f"{k}={v}" for k, v in pairs)
    assert parse_cookies(header) == dict(pairs)  # the last duplicate wins, like dict()


# -------------------------------------------------------------------------------- URL

HOST_NAMES = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9\-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,5}){0,2}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
)
PORTS = st.one_of(st.none(), st.integers(min_value=0, max_value=65535))
# A request target's path: "/" then any bytes an HTTP parser lets through (no space,
# no control characters, no "?" or "#", which end the path).
RAW_PATH = st.binary(max_size=30).map(
    lambda b: b"/" + bytes(c for c in b if c > 0x20 and c != 0x7F and c not in b"?#")
)


def query_bytes() -> st.SearchStrategy[bytes]:
    allowed = bytes(c for c in range(0x21, 0x100) if c not in (0x23, 0x7F))
    return st.lists(st.sampled_from(allowed), max_size=30).map(bytes)


@FAST
@given(
    st.sampled_from(["ws", "wss", "http", "https"]),
    HOST_NAMES,
    PORTS,
    RAW_PATH,
    query_bytes(),
    st.lists(st.tuples(ASCII_NAME, st.binary(max_size=10)), max_size=3),
)
def test_url_of_a_scope_with_a_well_formed_host(
    scheme: str,
    host: str,
    port: int | None,
    raw_path: bytes,
    query: bytes,
    other_headers: list[tuple[bytes, bytes]],
) -> None:
    other_headers = [(k, v) for k, v in other_headers if k != b"host"]
    netloc = host if port is None else f"{host}:{port}"
    scope = {
        "type": "websocket",
        "scheme": scheme,
        "path": raw_path.decode("latin-1"),
        "raw_path": raw_path,
        "query_string": query,
        "headers": [*other_headers, (b"host", netloc.encode())],
        "server": ("127.0.0.1", 8000),
    }
    url = URL(scope=scope)
    assert url.scheme == scheme
    assert url.netloc == netloc
    assert url.hostname == host.strip("[]").lower()
    assert url.port == port
    # The path as the client sent it (Python's URL parser drops tabs and newlines, which
    # an HTTP request line cannot carry anyway).
    assert url.path == raw_path.decode("latin-1")
    assert url.query == query.decode("latin-1")
    assert str(url).endswith(raw_path.decode("latin-1") + ("?" + url.query if query else ""))


@FAST
@given(
    st.sampled_from(["ws", "wss"]),
    st.one_of(st.none(), st.binary(max_size=20)),
    st.one_of(st.none(), st.binary(max_size=30).map(lambda b: b"/" + b)),
    st.text(alphabet=TEXT, max_size=20).map(lambda p: "/" + p),
    st.binary(max_size=20),
    st.one_of(
        st.none(),
        st.tuples(
            st.one_of(st.ip_addresses(v=4).map(str), st.just("localhost")),
            st.one_of(st.none(), st.integers(min_value=0, max_value=65535)),
        ),
    ),
)
def test_url_of_any_scope_without_a_bad_host(
    scheme: str,
    host: bytes | None,
    raw_path: bytes | None,
    path: str,
    query: bytes,
    server: tuple[str, int | None] | None,
) -> None:
    """Any bytes after the "/" of raw_path, any query_string; a Host header of any
    bytes but those that make Python's URL parser raise or split differently ("[",
    "]", ":" and the delimiters), and not empty (see test_a_malformed_host_* and
    test_an_empty_host_*)."""
    if host is not None:
        host = bytes(c for c in host if c not in b"[]:/?#@\\") or None
    headers = [] if host is None else [(b"host", host)]
    scope: dict[str, Any] = {
        "type": "websocket",
        "scheme": scheme,
        "path": path,
        "query_string": query,
        "headers": headers,
    }
    if raw_path is not None:
        scope["raw_path"] = raw_path
    if server is not None:
        scope["server"] = server
    url = URL(scope=scope)
    for attribute in ("scheme", "netloc", "hostname", "port", "path", "query", "fragment"):
        getattr(url, attribute)
    assert isinstance(str(url), str)
    if host or server:
        assert url.is_secure is (scheme == "wss")


def test_a_malformed_host_header_does_not_break_the_url() -> None:
    for host in (b"[", b"h:x", b"h:99999", b"]"):
        scope = {
            "type": "websocket",
            "path": "/p",
            "raw_path": b"/p",
            "query_string": b"",
            "headers": [(b"host", host)],
            "scheme": "ws",
        }
        url = URL(scope=scope)
        assert url.path == "/p"
        url.port  # noqa: B018


def test_an_empty_host_header_falls_back_to_the_server_address() -> None:
    for raw_path in (b"/p", b"//evil.com/x"):
        scope = {
            "type": "websocket",
            "path": raw_path.decode(),
            "raw_path": raw_path,
            "query_string": b"",
            "headers": [(b"host", b"")],
            "scheme": "wss",
            "server": ("127.0.0.1", 8000),
        }
        url = URL(scope=scope)
        assert (url.scheme, url.path, url.is_secure) == ("wss", raw_path.decode(), True)
        assert url.hostname == "127.0.0.1"


def test_an_ipv6_server_address_without_host_header() -> None:
    scope = {
        "type": "websocket",
        "path": "/p",
        "raw_path": b"/p",
        "query_string": b"",
        "headers": [],
        "scheme": "ws",
        "server": ("::1", 8000),
    }
    url = URL(scope=scope)
    assert (url.hostname, url.port, url.path) == ("::1", 8000, "/p")


# -------------------------------------------------------------- the WebSocket decoders


class JSONConsumer(WebSocketEndpoint):
    encoding = "json"

    async def on_receive(self, ws: WebSocket, data: Any) -> None:
        # The standard library writes any int exactly, so the test sees what was parsed.
        await ws.send_text(json.dumps(data))


def decoder_app() -> NexiosApp:
    app = NexiosApp()

    @app.ws_route("/json")
    async def receive_json(ws: WebSocket) -> None:
        await ws.accept()
        while True:
            await ws.send_text(json.dumps(await ws.receive_json()))

    @app.ws_route("/text")
    async def receive_text(ws: WebSocket) -> None:
        await ws.accept()
        while True:
            await ws.send_text(await ws.receive_text())

    @app.ws_route("/bytes")
    async def receive_bytes(ws: WebSocket) -> None:
        await ws.accept()
        while True:
            await ws.send_bytes(await ws.receive_bytes())

    app.add_ws_route(JSONConsumer.as_route("/consumer/json"))
    return app


@pytest.fixture(scope="module")
def decoders() -> Iterator[TestClient]:
    with TestClient(decoder_app(), timeout=5) as client:
        yield client


def strictly_equal(a: Any, b: Any) -> bool:
    """Equal, and of the same JSON types all the way down (1 is not 1.0, True not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(strictly_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(strictly_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


def has_big_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return not -INT64 <= value < 2 * INT64
    if isinstance(value, dict):
        return any(has_big_int(v) for v in value.values())
    if isinstance(value, list):
        return any(has_big_int(v) for v in value)
    return False


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-INT64, max_value=INT64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=TEXT, max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet=TEXT, max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)
JSON_DOCUMENTS = st.one_of(
    JSON_VALUES.map(json.dumps),
    JSON_VALUES.map(lambda v: json.dumps(v, ensure_ascii=False, indent=1)),
    # Almost JSON: one character cut off, or one inserted.
    st.tuples(
        JSON_VALUES.map(json.dumps), st.integers(min_value=0), st.text(alphabet=TEXT, max_size=1)
    ).map(lambda t: t[0][: t[1] % (len(t[0]) + 1)] + t[2] + t[0][t[1] % (len(t[0]) + 1) + 1 :]),
    st.text(alphabet=TEXT, max_size=30),
    st.sampled_from(
        [
            "NaN",
            "Infinity",
            "-Infinity",
            "1e400",
            '"\\ud800"',
            "",
            " ",
            "[1,]",
            '{"a":1,"a":2}',
            "-0",
            "-0.0",
            "1E2",
            "\ufeff1",
            "0x10",
            "01",
            "1.",
            ".5",
        ]
    ),
)


def exchange(
    client: TestClient, route: str, data: str | bytes
) -> tuple[str | None, WebSocketDisconnect | None]:
    """Send one message on a new connection: the text that came back, or the close."""
    with client.websocket_connect(route) as ws:
        if isinstance(data, str):
            ws.send_text(data)
        else:
            ws.send_bytes(data)
        try:
            return ws.receive_text(), None
        except WebSocketDisconnect as exc:
            return None, exc


def json_reference(data: str | bytes) -> tuple[bool, Any]:
    """What the standard library makes of the message: (parsed?, value)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return True, json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False, None


@SESSIONS
@given(
    st.sampled_from(["/json", "/consumer/json"]),
    st.one_of(
        JSON_DOCUMENTS.map(lambda text: ("text", text)),
        JSON_DOCUMENTS.map(lambda text: ("bytes", text.encode("utf-8"))),
        st.binary(max_size=30).map(lambda data: ("bytes", data)),
    ),
)
def test_receive_json_gives_the_value_or_closes_with_1007(
    decoders: TestClient, route: str, message: tuple[str, Any]
) -> None:
    _, data = message
    parsed, reference = json_reference(data)
    # Integers beyond 64 bits: see test_receive_json_keeps_big_integers.
    assume(not (parsed and has_big_int(reference)))
    echoed, closed = exchange(decoders, route, data)
    if closed is not None:
        event(f"closed with {closed.code}")
        assert closed.code == 1007, (data, closed.code, closed.reason)
        assert closed.reason.startswith("Message is not valid JSON"), closed.reason
        assert 0 < len(closed.reason.encode()) <= 123
        return
    event("parsed")
    # The message was parsed: the standard library parses it too, to the same value.
    assert parsed, f"{data!r} was accepted as {echoed!r}, json.loads refuses it"
    assert strictly_equal(json.loads(echoed), reference), (data, echoed, reference)


@SESSIONS
@given(st.binary(max_size=40), st.text(alphabet=TEXT, max_size=40))
def test_receive_text_echoes_text_and_closes_on_bytes_with_1003(
    decoders: TestClient, data: bytes, text: str
) -> None:
    with decoders.websocket_connect("/text") as ws:
        ws.send_text(text)
        assert ws.receive_text() == text
        ws.send_bytes(data)
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_text()
    assert (info.value.code, info.value.reason) == (
        1003,
        "Expected a text message, got a binary one.",
    )


@SESSIONS
@given(st.binary(max_size=40), st.text(alphabet=TEXT, max_size=40))
def test_receive_bytes_echoes_bytes_and_closes_on_text_with_1003(
    decoders: TestClient, data: bytes, text: str
) -> None:
    with decoders.websocket_connect("/bytes") as ws:
        ws.send_bytes(data)
        assert ws.receive_bytes() == data
        ws.send_text(text)
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_bytes()
    assert (info.value.code, info.value.reason) == (
        1003,
        "Expected a binary message, got a text one.",
    )


@pytest.mark.parametrize("route", ["/json", "/consumer/json"])
def test_receive_json_keeps_big_integers(decoders: TestClient, route: str) -> None:
    for number in (
        "123456789012345678901234567890",
        "18446744073709551616",
        "-9223372036854775809",
    ):
        echoed, closed = exchange(decoders, route, number)
        if closed is not None:
            assert closed.code == 1007  # refusing it would be fine too
            continue
        assert echoed is not None
        assert strictly_equal(json.loads(echoed), int(number)), (number, echoed)
