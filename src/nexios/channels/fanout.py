"""Fan-out: one log entry to a group's live members, encoded and framed once per form.

A *form* is how a member receives a group's messages: its encoding (``"auto"``,
``"json"``, ``"text"``, ``"bytes"``), or an *envelope*, a JSON text message that says
where the message sits in the group's stream::

    {"group": "room", "epoch": "3f9c2a10b1", "offset": 57, "data": {...}}

``data`` is the payload: JSON as published, a string for text, and for bytes the base64
text with ``"encoding": "base64"`` beside it. A message published while the broker
could not log it has ``"epoch": null, "offset": null``. A member that fell off the log
with the ``"skip"`` policy is told in the same shape, with no ``data`` and ``"missed"``,
the number of messages it did not get, and ``offset``, the last of them.

Everything here is synchronous: a socket that does not take a message at once leaves
its member behind (``Registry.fall_behind``); the layer's writer catches it up.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

import orjson

from nexios.channels.log import PayloadKind
from nexios.channels.registry import Group, Member, Registry
from nexios.server.frames import BINARY, TEXT, frame_header
from nexios.types import Message

__all__ = ["Form", "deliver", "envelope", "form", "message", "message_for", "skip_notice"]

# A form: the ASGI message and the same message framed (for servers that write it as is).
Form = tuple[Message, bytes]


def form(kind: str, body: bytes, encoding: str) -> Form:
    """The message a member with ``encoding`` gets for a payload of ``kind``, and the
    same message framed (built once per fan-out, written as is by nexios' server)."""
    if kind == "bytes" or encoding == "bytes":
        return {"type": "websocket.send", "bytes": body}, frame_header(BINARY, len(body)) + body
    if encoding == "json" and kind == "text":
        body = orjson.dumps(body.decode())
    return {"type": "websocket.send", "text": body.decode()}, frame_header(TEXT, len(body)) + body


def message(kind: str, body: bytes, encoding: str) -> Message:
    """`form`'s message alone: for one member (a writer catching it up), where a frame
    built beside it would be a copy of the payload for nothing."""
    if kind == "bytes" or encoding == "bytes":
        return {"type": "websocket.send", "bytes": body}
    if encoding == "json" and kind == "text":
        return {"type": "websocket.send", "text": orjson.dumps(body.decode()).decode()}
    return {"type": "websocket.send", "text": body.decode()}


def envelope(group: str, epoch: str | None, offset: int | None, kind: str, body: bytes) -> Form:
    """The envelope of a payload (see the module docstring)."""
    if kind == "json":
        data = body
    elif kind == "text":
        data = orjson.dumps(body.decode())
    else:
        data = b'"' + base64.b64encode(body) + b'","encoding":"base64'
        data += b'"'
    where = (
        b'"epoch":null,"offset":null'
        if epoch is None
        else b'"epoch":"' + epoch.encode() + b'","offset":' + str(offset).encode()
    )
    text = b'{"group":' + orjson.dumps(group) + b"," + where + b',"data":' + data + b"}"
    return {"type": "websocket.send", "text": text.decode()}, frame_header(TEXT, len(text)) + text


def skip_notice(group: str, epoch: str, offset: int, missed: int) -> Message:
    """What an enveloped member that skipped ``missed`` messages (to ``offset``) gets."""
    text = orjson.dumps({"group": group, "epoch": epoch, "offset": offset, "missed": missed})
    return {"type": "websocket.send", "text": text.decode()}


def message_for(
    member: Member, group: Group, offset: int | None, kind: PayloadKind, body: bytes
) -> Message:
    """The message one member gets for one entry (a writer catching it up)."""
    if member.groups.get(group, False):
        epoch = group.log.epoch if offset is not None else None
        return envelope(group.name, epoch, offset, kind, body)[0]
    return message(kind, body, member.encoding)


def deliver(
    group: Group,
    members: Iterable[Member],
    offset: int | None,
    kind: PayloadKind,
    body: bytes,
    exclude: object = None,
) -> tuple[int, list[Member]]:
    """Write one entry (``offset`` None: a message outside the log) to those of
    ``members`` still live in ``group`` whose socket takes it at once, but ``exclude``
    (a member, or a sink). Returns how many got it and the members whose socket did not
    (the caller puts them behind, after the loop: ``group.live`` is not changed while
    it may be iterated). ``members`` may be ``group.live`` itself: no snapshot, no
    tuple per member (a fan-out to 5,000 members allocates nothing per member that
    could outlive it and wake the garbage collector)."""
    live = group.live
    forms: dict[object, Form] = {}
    sent = 0
    stuck: list[Member] = []
    for member in members:
        wants_envelope = live.get(member)
        if wants_envelope is None:  # left (or fell behind) since the snapshot
            continue
        sink = member.sink
        if member is exclude or sink is exclude:
            continue
        key: object = True if wants_envelope else member.encoding
        shaped = forms.get(key)
        if shaped is None:
            if wants_envelope:
                epoch = group.log.epoch if offset is not None else None
                shaped = envelope(group.name, epoch, offset, kind, body)
            else:
                shaped = form(kind, body, member.encoding)
            forms[key] = shaped
        if sink.send_nowait(shaped[0], shaped[1]):
            sent += 1
        else:
            stuck.append(member)
    return sent, stuck


def put_behind(group: Group, stuck: list[Member], cursor: int) -> None:
    """The members whose socket did not take entry ``cursor + 1``."""
    for member in stuck:
        Registry.fall_behind(member, group, cursor)
