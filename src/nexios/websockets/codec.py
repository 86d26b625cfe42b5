"""JSON from a client: one parser, one set of answers.

Every message that ``receive_json``/``iter_json`` (and consumers with
``encoding = "json"``) read goes through `decode_json`. What it accepts is RFC 8259
JSON within these limits, and anything else raises `WebSocketInvalidJSON`, which the
framework answers with close code 1007 and the reason given here:

======================  =============================================================
nesting                 at most ``MAX_DEPTH`` (1024) arrays and objects deep
integers                exact, up to ``MAX_INT_DIGITS`` (308) digits
other numbers           finite doubles: ``1e400`` is refused, never read as ``inf``
strings                 valid UTF-8 and no lone surrogate escape (``"\\ud800"``)
literals                ``NaN``, ``Infinity`` and friends are not JSON (RFC 8259 §6)
======================  =============================================================

orjson parses every message and so sets the rules above (its own depth limit is 1024).
It reads integers beyond 64 bits as doubles, losing digits, so a message with a run of
19 or more digits is read a second time, by the standard library, for its exact
integers; the standard library only ever sees text orjson accepted, and gets the stack
the depth limit needs.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any, Final

import orjson

from nexios.exceptions import WebSocketInvalidJSON

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "decode_json"]

#: Arrays and objects inside one another, at most (orjson's limit).
MAX_DEPTH: Final = 1024
#: Digits in one integer, at most: orjson refuses integers beyond the largest double
#: (about 1.8e308) as out of range; 308 digits is the length every such integer fits.
MAX_INT_DIGITS: Final = 308

_LONG_NUMBER_TEXT = re.compile(r"[0-9]{19}")
_LONG_NUMBER_BYTES = re.compile(rb"[0-9]{19}")
_OUT_OF_RANGE: Final = "number out of range"
# Python frames per level of nesting in the standard library's scanner, and headroom.
_STACK_PER_LEVEL: Final = 2
_STACK_HEADROOM: Final = 64


def decode_json(data: str | bytes) -> Any:
    """Parse a message as JSON; `WebSocketInvalidJSON` (close code 1007) if it is not,
    with a reason that says what is wrong (see the module docstring for the limits)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _invalid(_orjson_reason(exc.msg)) from None
    long_number = (
        _LONG_NUMBER_TEXT.search(data) if isinstance(data, str) else _LONG_NUMBER_BYTES.search(data)
    )
    if long_number is None:
        return value
    return _exact(data)


def _exact(data: str | bytes) -> Any:
    """The standard library's reading of JSON that orjson accepted: exact integers."""
    limit = sys.getrecursionlimit()
    needed = _frames_in_use() + MAX_DEPTH * _STACK_PER_LEVEL + _STACK_HEADROOM
    if needed > limit:
        sys.setrecursionlimit(needed)
    try:
        return json.loads(data, parse_int=_integer, parse_float=_finite)
    except _Refused as exc:
        raise _invalid(str(exc)) from None
    except RecursionError:  # not reached within MAX_DEPTH; never a 1011 all the same
        raise _invalid(f"nested more than {MAX_DEPTH} deep") from None
    finally:
        if needed > limit:
            sys.setrecursionlimit(limit)


class _Refused(ValueError):
    """A number the limits refuse (raised inside the standard library's parser)."""


def _integer(digits: str) -> int:
    if len(digits) - (digits[0] == "-") > MAX_INT_DIGITS:
        raise _Refused(_OUT_OF_RANGE)
    return int(digits)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # orjson refused these already; belt and braces
        raise _Refused(_OUT_OF_RANGE)
    return number


def _frames_in_use() -> int:
    frame = sys._getframe()
    depth = 0
    while frame is not None:
        depth += 1
        frame = frame.f_back  # type: ignore[assignment]
    return depth


def _orjson_reason(message: str) -> str:
    if message.startswith("depth limit exceeded") or message.startswith("recursion limit"):
        return f"nested more than {MAX_DEPTH} deep"
    if "infinity" in message:
        return _OUT_OF_RANGE
    return message


def _invalid(reason: str) -> WebSocketInvalidJSON:
    return WebSocketInvalidJSON(f"Message is not valid JSON: {reason}.")
