"""Hostile JSON on a real server: every message `receive_json` refuses is answered with
1007 and a reason that says what is wrong, never 1011, never a traceback in the log; and
a message with a long integer gets the same answer as the same message without it.

Before: a 19-digit integer sent the message to the standard library's parser, which raised
RecursionError inside 1,000 levels of nesting (1011, a traceback logged per message), read
``1e400`` as ``inf``, let ``"\\ud800"`` through, and called an over-long integer "not UTF-8".
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from nexios import NexiosApp, WebSocket, WebSocketConfig
from nexios.websockets.codec import MAX_DEPTH, MAX_INT_DIGITS

TIMEOUT = 5.0
BIG = "1234567890123456789012"  # beyond 64 bits: the exact path


def nested(depth: int, inner: str) -> str:
    return "[" * depth + inner + "]" * depth


def fingerprint(value: Any) -> str:
    """``"<depth>:<innermost value>"``: deep lists are too deep for repr()."""
    depth = 0
    while isinstance(value, list) and len(value) == 1:
        depth, value = depth + 1, value[0]
    return f"{depth}:{value!r}"


def make_app() -> NexiosApp:
    app = NexiosApp(websocket_config=WebSocketConfig(ping_interval=None))

    @app.ws_route("/json")
    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        while True:
            await ws.send_text(fingerprint(await ws.receive_json()))

    return app


async def answer(url: str, message: str | bytes) -> tuple[str | None, int | None, str]:
    """What the server does with one message: (echo, None, "") or (None, code, reason)."""
    async with connect(url, max_size=None) as ws:
        await ws.send(message)
        try:
            reply = await asyncio.wait_for(ws.recv(), TIMEOUT)
        except ConnectionClosed as exc:
            closed = exc.rcvd
        else:
            return str(reply), None, ""
    assert closed is not None, "the server closed without a Close frame"
    return None, closed.code, closed.reason


REFUSED = {
    "a long integer inside 1,025 levels": (
        nested(MAX_DEPTH + 1, BIG),
        f"nested more than {MAX_DEPTH} deep",
    ),
    "1,025 levels without one": (nested(MAX_DEPTH + 1, "1"), f"nested more than {MAX_DEPTH} deep"),
    "1e400 beside a long integer": (f"[1e400, {BIG}]", "number out of range"),
    "1e400 alone": ("[1e400]", "number out of range"),
    "an integer of 400 digits": ("9" * 400, "number out of range"),
    "an integer of 309 digits below the largest double": (
        "1" + "0" * (MAX_INT_DIGITS),
        "number out of range",
    ),
    "a lone surrogate beside a long integer": (f'["\\ud800", {BIG}]', "surrogate"),
    "a lone surrogate": ('"\\ud800"', "surrogate"),
    "NaN beside a long integer": (f"[NaN, {BIG}]", "expected a JSON value"),
    "invalid UTF-8 in a binary message": (b'["\xff", 1]', "not valid UTF-8"),
}


async def test_refused_json_is_1007_with_a_true_reason(
    live_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with live_server(make_app()) as server:
        for name, (message, why) in REFUSED.items():
            echo, code, reason = await answer(server.ws + "/json", message)
            assert code == 1007, (name, echo, code, reason)
            assert reason.startswith("Message is not valid JSON: "), (name, reason)
            assert why in reason, (name, reason)
            assert 0 < len(reason.encode()) <= 123
    assert server.errors == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_long_integers_change_nothing_but_exactness(live_server: Any) -> None:
    """1,000 levels of nesting parse with or without a long integer inside, and the
    integer arrives exact; integers up to MAX_INT_DIGITS digits too."""
    async with live_server(make_app()) as server:
        url = server.ws + "/json"
        for depth, inner in ((1000, BIG), (MAX_DEPTH, BIG), (MAX_DEPTH, "1")):
            expected = f"{depth}:{inner}"
            assert await answer(url, nested(depth, inner)) == (expected, None, ""), depth
        biggest = "9" * MAX_INT_DIGITS
        expected = f"0:{{'n': {biggest}}}"
        assert await answer(url, f'{{"n": {biggest}}}') == (expected, None, "")
        assert await answer(url, orjson.dumps({"x": 1.5e308})) == ("0:{'x': 1.5e+308}", None, "")
    assert server.errors == []
