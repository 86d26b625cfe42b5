"""What the chat's clients may send, validated with pydantic, and the limits that bound it.

A client sends JSON objects as text frames:

* ``{"type": "message", "text": "hello"}``: say something to the room;
* ``{"type": "typing"}``: tell the others this person is typing.

Anything else gets ``{"type": "error", "error": "..."}`` back, and the connection stays
open. Names and rooms are checked before a person enters a room (``name_problem``,
``room_problem``); a bad one closes the connection with 1008 and the problem as reason.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints, TypeAdapter, ValidationError

MAX_NAME = 24  # characters
MAX_TEXT = 1000  # characters of one message or announcement
MAX_CLIENT_ID = 64
HISTORY_ON_JOIN = 50  # messages a person sees on entering a room
HISTORY_KEPT = 100  # messages a room keeps (its log's max_count)

ROOM = re.compile(r"[A-Za-z0-9_-]{1,32}")
CLIENT_ID = re.compile(rf"[A-Za-z0-9_-]{{8,{MAX_CLIENT_ID}}}")

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT)]


class Say(BaseModel):
    type: Literal["message"]
    text: Text


class Typing(BaseModel):
    type: Literal["typing"]


class Announcement(BaseModel):
    """The body of ``POST /rooms/{room}/announce``."""

    text: Text


Inbound = Annotated[Say | Typing, Field(discriminator="type")]
INBOUND: TypeAdapter[Say | Typing] = TypeAdapter(Inbound)


def describe(exc: ValidationError) -> str:
    """One short line a person can act on, from pydantic's first error."""
    error = exc.errors(include_url=False)[0]
    kind = error["type"]
    if kind == "json_invalid":
        return "Not valid JSON."
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return 'Unknown message: "type" must be "message" or "typing".'
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "Expected a JSON object."
    loc = error["loc"]
    if loc and loc[0] in ("message", "typing"):  # the union's tag
        loc = loc[1:]
    where = ".".join(str(part) for part in loc)
    return f"{where}: {error['msg']}." if where else f"{error['msg']}."


def name_problem(name: str) -> str | None:
    """Why *name* (already stripped) cannot be used, or None."""
    if not name:
        return "Pick a name to join."
    if len(name) > MAX_NAME:
        return f"Names are {MAX_NAME} characters at most."
    if not name.isprintable():
        return "Names cannot contain control characters."
    return None


def room_problem(room: str) -> str | None:
    """Why *room* is not a room name, or None."""
    if ROOM.fullmatch(room) is None:
        return "Room names are 1 to 32 letters, digits, '-' or '_'."
    return None
