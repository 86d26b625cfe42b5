from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import nexios.http
from nexios.exceptions import HTTPException, ImproperlyConfigured, NoMatchFound
from nexios.http import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    NexiosResponse,
    PlainTextResponse,
    RedirectResponse,
    Request,
    Response,
)
from nexios.routing.http import Route, Router
from nexios.types import Receive, Scope, Send


@pytest.fixture
def router() -> Router:
    return Router()


@pytest.fixture
async def client(router: Router) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=router)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


def test_exports() -> None:
    assert nexios.http.__all__ == sorted(nexios.http.__all__)
    assert set(nexios.http.__all__) == {
        "FileResponse",
        "HTMLResponse",
        "JSONResponse",
        "MutableHeaders",
        "NexiosResponse",
        "PlainTextResponse",
        "RedirectResponse",
        "Request",
        "Response",
        "http_exception_response",
    }


# -- handler forms and return values ---------------------------------------------------


async def test_handler_forms(router: Router, client: httpx.AsyncClient) -> None:
    threads: dict[str, int] = {}

    @router.get("/both")
    async def both(request: Request, response: NexiosResponse) -> NexiosResponse:
        return response.json({"form": "both"})

    @router.get("/request-only")
    async def request_only(request: Request) -> dict[str, str]:
        return {"form": "request-only"}

    @router.get("/sync")
    def sync(request: Request, response: NexiosResponse) -> NexiosResponse:
        threads["sync"] = threading.get_ident()
        return response.json({"form": "sync"})

    @router.get("/sync-request-only")
    def sync_request_only(request: Request) -> str:
        return "sync-request-only"

    assert (await client.get("/both")).json() == {"form": "both"}
    assert (await client.get("/request-only")).json() == {"form": "request-only"}
    assert (await client.get("/sync")).json() == {"form": "sync"}
    assert threads["sync"] != threading.get_ident()  # ran in a worker thread
    assert (await client.get("/sync-request-only")).text == "sync-request-only"


async def test_callable_object_handler(router: Router, client: httpx.AsyncClient) -> None:
    class Handler:
        async def __call__(self, request: Request) -> dict[str, bool]:
            return {"object": True}

    router.add_route("/", Handler())
    assert (await client.get("/")).json() == {"object": True}


def test_handler_signature_is_checked_at_registration(router: Router) -> None:
    async def no_args() -> None: ...

    async def three(request: Request, response: NexiosResponse, extra: int) -> None: ...

    for handler in (no_args, three):
        with pytest.raises(ImproperlyConfigured, match=r"must take \(request\)"):
            router.add_route("/", handler)
    with pytest.raises(ImproperlyConfigured, match="not callable"):
        Route("/", "handler")  # type: ignore[arg-type]
    with pytest.raises(ImproperlyConfigured, match="list of names"):
        Route("/", no_args, methods="GET")


@pytest.mark.parametrize(
    ("value", "status", "content_type", "body"),
    [
        ({"a": 1}, 200, "application/json", b'{"a":1}'),
        ([1, 2], 200, "application/json", b"[1,2]"),
        ("hé", 200, "text/plain; charset=utf-8", "hé".encode()),
        (b"\x00\x01", 200, "application/octet-stream", b"\x00\x01"),
        (None, 200, None, b""),
        (HTMLResponse("<p>x</p>", 201), 201, "text/html; charset=utf-8", b"<p>x</p>"),
        (Response(b"raw", 202, media_type="text/csv"), 202, "text/csv; charset=utf-8", b"raw"),
    ],
)
async def test_return_values(
    router: Router,
    client: httpx.AsyncClient,
    value: Any,
    status: int,
    content_type: str | None,
    body: bytes,
) -> None:
    router.add_route("/", lambda request: value)
    response = await client.get("/")
    assert response.status_code == status
    assert response.headers.get("content-type") == content_type
    assert response.content == body
    assert response.headers["content-length"] == str(len(body))


async def test_returned_value_keeps_what_was_set_on_the_builder(
    router: Router, client: httpx.AsyncClient
) -> None:
    @router.post("/")
    async def create(request: Request, response: NexiosResponse) -> dict[str, int]:
        response.status(201).set_header("x-id", "7").set_cookie("seen", "1")
        return {"id": 7}

    response = await client.post("/")
    assert response.status_code == 201
    assert response.json() == {"id": 7}
    assert response.headers["x-id"] == "7"
    assert response.cookies["seen"] == "1"


async def test_unsupported_return_value_is_an_error(
    router: Router, client: httpx.AsyncClient
) -> None:
    @router.get("/")
    async def answer(request: Request) -> int:
        return 42

    with pytest.raises(TypeError, match="answer returned a int"):
        await client.get("/")


async def test_other_exceptions_propagate(router: Router, client: httpx.AsyncClient) -> None:
    @router.get("/")
    async def broken(request: Request) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await client.get("/")


# -- the builder ------------------------------------------------------------------------


async def test_builder_chains_and_its_headers_win(
    router: Router, client: httpx.AsyncClient
) -> None:
    @router.get("/")
    async def home(request: Request, response: NexiosResponse) -> NexiosResponse:
        response.set_header("content-type", "application/vnd.nexios+json")
        assert response.status_code == 200
        return response.json({"ok": True}, headers={"x-a": "1"}).status(202)

    response = await client.get("/")
    assert response.status_code == 202
    assert response.headers["content-type"] == "application/vnd.nexios+json"
    assert response.headers["x-a"] == "1"
    assert response.json() == {"ok": True}


async def test_builder_bodies(router: Router, client: httpx.AsyncClient) -> None:
    @router.get("/text")
    async def text(request: Request, response: NexiosResponse) -> NexiosResponse:
        return response.text("hi", status_code=203)

    @router.get("/html")
    async def html(request: Request, response: NexiosResponse) -> NexiosResponse:
        return response.html("<b>hi</b>")

    @router.get("/empty")
    async def empty(request: Request, response: NexiosResponse) -> NexiosResponse:
        return response.json({"dropped": True}).empty()

    @router.get("/redirect")
    async def redirect(request: Request, response: NexiosResponse) -> NexiosResponse:
        return response.redirect("/text", status_code=302)

    @router.get("/default")
    async def default(request: Request, response: NexiosResponse) -> None:
        pass

    r = await client.get("/text")
    assert (r.status_code, r.text, r.headers["content-type"]) == (
        203,
        "hi",
        "text/plain; charset=utf-8",
    )
    r = await client.get("/html")
    assert (r.text, r.headers["content-type"]) == ("<b>hi</b>", "text/html; charset=utf-8")
    r = await client.get("/empty")
    assert (r.status_code, r.content) == (204, b"")
    assert "content-length" not in r.headers
    assert "content-type" not in r.headers
    r = await client.get("/redirect")
    assert (r.status_code, r.headers["location"]) == (302, "/text")
    r = await client.get("/default")
    assert (r.status_code, r.content, r.headers["content-length"]) == (200, b"", "0")


# -- paths, prefixes and nested routers --------------------------------------------------


async def test_path_convertors(router: Router, client: httpx.AsyncClient) -> None:
    @router.get("/items/{id:int}")
    @router.get("/prices/{f:float}")
    @router.get("/users/{u:uuid}")
    @router.get("/files/{rest:path}")
    @router.get("/rooms/{room}")
    async def params(request: Request) -> dict[str, str]:
        return {k: f"{type(v).__name__}:{v}" for k, v in request.path_params.items()}

    user = uuid.uuid4()
    assert (await client.get("/items/42")).json() == {"id": "int:42"}
    assert (await client.get("/prices/1.5")).json() == {"f": "float:1.5"}
    assert (await client.get(f"/users/{user}")).json() == {"u": f"UUID:{user}"}
    assert (await client.get("/files/a/b/c.txt")).json() == {"rest": "str:a/b/c.txt"}
    assert (await client.get("/rooms/lobby")).json() == {"room": "str:lobby"}
    assert (await client.get("/items/abc")).status_code == 404
    assert (await client.get("/users/not-a-uuid")).status_code == 404


async def test_router_prefix_is_matched_on_segment_boundaries() -> None:
    api = Router(prefix="/api")
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:

        @api.get("/")
        async def index(request: Request) -> str:
            return "index"

        @api.get("/users")
        async def users(request: Request) -> str:
            return "users"

        assert (await c.get("/api/users")).text == "users"
        assert (await c.get("/api/")).text == "index"
        assert (await c.get("/api")).text == "index"
        assert (await c.get("/api-v2/users")).status_code == 404
        assert (await c.get("/users")).status_code == 404


async def test_mounted_router_is_a_live_reference(
    router: Router, client: httpx.AsyncClient
) -> None:
    child = Router(prefix="/chat")
    router.mount_router(child)

    @child.get("/rooms")
    async def rooms(request: Request) -> list[str]:
        return ["lobby"]

    assert (await client.get("/chat/rooms")).json() == ["lobby"]
    assert (await client.get("/chat-old/rooms")).status_code == 404


async def test_mount_prefix_replaces_the_routers_own(
    router: Router, client: httpx.AsyncClient
) -> None:
    child = Router(prefix="/v1")
    child.add_route("/ping", lambda request: "pong")
    router.mount_router(child, "/v2")
    assert (await client.get("/v2/ping")).text == "pong"
    assert (await client.get("/v1/ping")).status_code == 404


async def test_prefix_parameters_merge_with_route_parameters(
    router: Router, client: httpx.AsyncClient
) -> None:
    rooms = Router(prefix="/rooms/{room}")
    messages = Router()
    rooms.mount_router(messages, "/messages")
    router.mount_router(rooms)

    @messages.get("/{n:int}", name="message")
    async def message(request: Request) -> dict[str, Any]:
        return dict(request.path_params)

    assert (await client.get("/rooms/lobby/messages/3")).json() == {"room": "lobby", "n": 3}
    assert router.url_path_for("message", room="lobby", n=3) == "/rooms/lobby/messages/3"


async def test_routes_match_in_the_order_they_were_added(
    router: Router, client: httpx.AsyncClient
) -> None:
    router.add_route("/users/me", lambda request: "me")
    router.add_route("/users/{name}", lambda request: request.path_params["name"])
    assert (await client.get("/users/me")).text == "me"
    assert (await client.get("/users/ann")).text == "ann"


def test_mounting_a_cycle_is_refused() -> None:
    a, b = Router(), Router()
    a.mount_router(b, "/b")
    with pytest.raises(ImproperlyConfigured, match="cycle"):
        b.mount_router(a, "/a")
    with pytest.raises(ImproperlyConfigured, match="cycle"):
        a.mount_router(a, "/a")


# -- 404, 405, HEAD -----------------------------------------------------------------------


async def test_not_found_and_its_override(router: Router, client: httpx.AsyncClient) -> None:
    response = await client.get("/nowhere")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}

    async def upgrade_required(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("use a WebSocket", 426)(scope, receive, send)

    router.not_found = upgrade_required
    response = await client.get("/nowhere")
    assert (response.status_code, response.text) == (426, "use a WebSocket")


async def test_method_not_allowed_lists_the_allowed_methods(
    router: Router, client: httpx.AsyncClient
) -> None:
    router.add_route("/items", lambda request: "list")
    router.add_route("/items", lambda request: "made", methods=["POST", "put"])
    response = await client.delete("/items")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, POST, PUT"
    assert response.json() == {"detail": "Method Not Allowed"}
    assert (await client.put("/items")).text == "made"
    assert router.allowed_methods("/items") == {"GET", "HEAD", "POST", "PUT"}


async def test_head_sends_the_headers_without_the_body(
    router: Router, client: httpx.AsyncClient
) -> None:
    router.add_route("/", lambda request: {"big": "x" * 100})
    response = await client.head("/")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(b'{"big":""}') + 100)


# -- errors -------------------------------------------------------------------------------


async def test_http_exception(router: Router, client: httpx.AsyncClient) -> None:
    @router.get("/teapot")
    async def teapot(request: Request) -> None:
        raise HTTPException(418, "short and stout", headers={"x-pot": "yes"})

    @router.get("/default-detail")
    async def default_detail(request: Request) -> None:
        raise HTTPException(403)

    response = await client.get("/teapot")
    assert response.status_code == 418
    assert response.json() == {"detail": "short and stout"}
    assert response.headers["x-pot"] == "yes"
    assert (await client.get("/default-detail")).json() == {"detail": "Forbidden"}


# -- the request ---------------------------------------------------------------------------


async def test_request_json(router: Router, client: httpx.AsyncClient) -> None:
    @router.post("/")
    async def echo(request: Request) -> dict[str, Any]:
        body = await request.body()
        data = await request.json()
        return {"data": data, "size": len(body), "again": await request.json() is data}

    response = await client.post("/", json={"a": [1, 2]})
    assert response.json() == {"data": {"a": [1, 2]}, "size": 11, "again": True}

    response = await client.post("/", content=b"{not json")
    assert response.status_code == 400
    assert response.json() == {"detail": "Request body is not valid JSON"}


async def test_request_text_uses_the_charset(router: Router, client: httpx.AsyncClient) -> None:
    @router.post("/")
    async def text(request: Request) -> str:
        return await request.text()

    response = await client.post(
        "/",
        content="café".encode("latin-1"),
        headers={"content-type": "text/plain; charset=latin-1"},
    )
    assert response.text == "café"
    response = await client.post("/", content=b"\xff", headers={"content-type": "text/plain"})
    assert response.status_code == 400


async def test_body_over_the_limit_is_refused(
    router: Router, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Request, "max_body_size", 10)

    @router.post("/")
    async def upload(request: Request) -> str:
        return str(len(await request.body()))

    @router.post("/big")
    async def big(request: Request) -> str:
        request.max_body_size = 100
        return str(len(await request.body()))

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 5  # no content-length: counted as it arrives

    for content in (b"x" * 11, chunks()):
        response = await client.post("/", content=content)
        assert response.status_code == 413
        assert response.json() == {"detail": "Request body is larger than the limit of 10 bytes."}
    assert (await client.post("/big", content=b"x" * 50)).text == "50"


async def test_stream_yields_chunks_once(router: Router, client: httpx.AsyncClient) -> None:
    @router.post("/")
    async def stream(request: Request) -> dict[str, Any]:
        sizes = [len(chunk) async for chunk in request.stream()]
        with pytest.raises(RuntimeError, match="reads it once"):
            await request.body()
        return {"sizes": sizes}

    async def chunks() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b"cde"

    assert (await client.post("/", content=chunks())).json() == {"sizes": [2, 3]}


async def test_form(router: Router, client: httpx.AsyncClient) -> None:
    @router.post("/")
    async def form(request: Request) -> dict[str, Any]:
        data = await request.form()
        return {"name": data["name"], "tags": data.getlist("tag")}

    response = await client.post(
        "/",
        content=b"name=J%C3%BCrgen+K&tag=a&tag=b",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.json() == {"name": "Jürgen K", "tags": ["a", "b"]}

    response = await client.post("/", files={"upload": b"data"})
    assert response.status_code == 415
    assert "multipart/form-data is not supported" in response.json()["detail"]
    response = await client.post("/", json={})
    assert response.status_code == 415
    assert response.json()["detail"].endswith("got application/json.")


async def test_query_params_headers_client_and_url(
    router: Router, client: httpx.AsyncClient
) -> None:
    @router.get("/search")
    async def search(request: Request) -> dict[str, Any]:
        request.state.seen = True
        return {
            "method": request.method,
            "q": request.query_params["q"],
            "tags": request.query_params.getlist("tag"),
            "agent": request.headers["X-Agent"],
            "client": request.client is not None and request.client.host,
            "url": str(request.url),
            "path": request.url.path,
            "state": request.scope["state"],
            "app": request.app,
        }

    response = await client.get("/search?q=chat&tag=a&tag=b", headers={"x-agent": "t"})
    assert response.json() == {
        "method": "GET",
        "q": "chat",
        "tags": ["a", "b"],
        "agent": "t",
        "client": "127.0.0.1",
        "url": "http://t/search?q=chat&tag=a&tag=b",
        "path": "/search",
        "state": {"seen": True},
        "app": None,
    }


async def test_cookies_in_and_out(router: Router, client: httpx.AsyncClient) -> None:
    @router.get("/")
    async def cookies(request: Request, response: NexiosResponse) -> NexiosResponse:
        response.set_cookie("session", "abc", max_age=60, httponly=True, secure=True)
        response.set_cookie("theme", "dark", samesite="strict", path="/app", domain="t")
        response.delete_cookie("old")
        return response.json(request.cookies)

    response = await client.get("/", headers={"cookie": "a=1; b=two"})
    assert response.json() == {"a": "1", "b": "two"}
    set_cookies = response.headers.get_list("set-cookie")
    assert set_cookies == [
        "session=abc; HttpOnly; Max-Age=60; Path=/; SameSite=lax; Secure",
        "theme=dark; Domain=t; Path=/app; SameSite=strict",
        'old=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/; SameSite=lax',
    ]


async def test_response_object_cookies(router: Router, client: httpx.AsyncClient) -> None:
    @router.get("/")
    async def login(request: Request) -> Response:
        response = JSONResponse({"ok": True})
        response.set_cookie("token", "t 1")
        response.delete_cookie("gone")
        response.headers["x-extra"] = "1"
        return response

    response = await client.get("/")
    assert response.headers["x-extra"] == "1"
    assert response.headers.get_list("set-cookie")[0] == 'token="t 1"; Path=/; SameSite=lax'
    assert response.headers.get_list("set-cookie")[1].startswith(
        'gone=""; expires=Thu, 01 Jan 1970'
    )


# -- other responses ---------------------------------------------------------------------


async def test_redirect_response(router: Router, client: httpx.AsyncClient) -> None:
    router.add_route("/old", lambda request: RedirectResponse("/new place?x=1"))
    response = await client.get("/old")
    assert response.status_code == 307
    assert response.headers["location"] == "/new%20place?x=1"


async def test_file_response(
    router: Router, client: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FileResponse, "chunk_size", 4)  # several chunks
    page = tmp_path / "page.html"
    page.write_text("<h1>hello</h1>")
    report = tmp_path / "report.bin"
    report.write_bytes(b"12345678")

    @router.get("/page")
    async def serve_page(request: Request) -> Response:
        return FileResponse(page)

    @router.get("/report")
    async def serve_report(request: Request, response: NexiosResponse) -> NexiosResponse:
        return response.file(report, filename="rapport é.bin")

    @router.get("/missing")
    async def missing(request: Request, response: NexiosResponse) -> NexiosResponse:
        return response.file(tmp_path / "nope.txt")

    @router.get("/directory")
    async def directory(request: Request) -> Response:
        return FileResponse(tmp_path)

    response = await client.get("/page")
    assert response.text == "<h1>hello</h1>"
    assert response.headers["content-type"] == "text/html"
    assert response.headers["content-length"] == "14"
    assert "content-disposition" not in response.headers

    response = await client.get("/report")
    assert response.content == b"12345678"
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == (
        "attachment; filename*=utf-8''rapport%20%C3%A9.bin"
    )

    head = await client.head("/page")
    assert (head.content, head.headers["content-length"]) == (b"", "14")

    for path in ("/missing", "/directory"):
        response = await client.get(path)
        assert response.status_code == 404
        assert response.json() == {"detail": "Not Found"}


async def test_plain_text_and_html_responses(router: Router, client: httpx.AsyncClient) -> None:
    router.add_route("/text", lambda request: PlainTextResponse("plain", headers={"x-a": "b"}))
    router.add_route("/html", lambda request: HTMLResponse("<i>x</i>", status_code=201))
    response = await client.get("/text")
    assert (response.text, response.headers["x-a"]) == ("plain", "b")
    response = await client.get("/html")
    assert (response.status_code, response.headers["content-type"]) == (
        201,
        "text/html; charset=utf-8",
    )


# -- url_path_for ---------------------------------------------------------------------------


def test_url_path_for() -> None:
    root = Router()
    api = Router(prefix="/api")
    root.mount_router(api)

    @root.get("/")
    async def home(request: Request) -> None: ...

    @api.get("/users/{id:int}", name="user")
    async def user(request: Request) -> None: ...

    assert root.url_path_for("home") == "/"
    assert root.url_path_for("user", id=5) == "/api/users/5"
    assert api.url_path_for("user", id=5) == "/api/users/5"

    with pytest.raises(NoMatchFound, match="No route named 'nobody'"):
        root.url_path_for("nobody")
    with pytest.raises(NoMatchFound, match=r"Route 'user' takes \(id\), not \(no parameters\)"):
        root.url_path_for("user")
    with pytest.raises(NoMatchFound, match=r"takes \(id\), not \(id, x\)"):
        root.url_path_for("user", id=1, x=2)
