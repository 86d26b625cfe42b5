"""Positions and the per-group log: what a group recently said, and where each reader is.

Sans-I/O: no sockets, no awaits, no clock. Nothing in here does I/O, so it is
unit-tested on its own, and the layer, the registry's cursors and a future Redis-backed
log share its vocabulary.

**Positions.** Every message appended to a group's log gets the next *offset* (the first
is 1; a log with no message is at 0). The *epoch* names the stream those offsets count
in, and changes whenever its past is lost: a memory log gets a new epoch each time it is
created (so each process start), a Redis stream will store its epoch beside it. A
position is only meaningful with its epoch: offset 57 of another epoch says nothing
about this one.

**The string form** a client sees is ``"<offset>:<epoch>"``, e.g. ``"57:3f9c2a10b"``:
the offset in plain decimal first, then a colon, then the epoch, which is 1 to 64
characters from the URL-unreserved set (``A-Z a-z 0-9 - . _ ~``). The offset comes first
so that parsing splits at the first colon and never has to guess where a number ends;
the whole string needs no escaping in JSON, and none in a URL query or path (RFC 3986
allows ``:`` there, and a string that starts with a digit cannot be read as a URL
scheme). Offsets are at most 2**53 - 1 (`MAX_OFFSET`) so that the dict form
``{"epoch": ..., "offset": ...}`` survives a JavaScript client's numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_OFFSET", "Position"]

#: The largest offset a position may carry: 2**53 - 1, the largest integer a JavaScript
#: number holds exactly (a log appending a million messages a second reaches it in 285
#: years).
MAX_OFFSET = 2**53 - 1

_MAX_EPOCH = 64
_EPOCH = re.compile(rf"[A-Za-z0-9._~-]{{1,{_MAX_EPOCH}}}")
_SHORT = re.compile(rf"(0|[1-9][0-9]{{0,15}}):([A-Za-z0-9._~-]{{1,{_MAX_EPOCH}}})")
_FORMS = (
    'a Position, a dict {"epoch": str, "offset": int}, '
    'or the string "<offset>:<epoch>" (e.g. "57:3f9c2a10b")'
)


def _check_epoch(epoch: object) -> str:
    if not isinstance(epoch, str) or _EPOCH.fullmatch(epoch) is None:
        raise ValueError(
            f"epoch {_show(epoch)} is not valid: use 1 to {_MAX_EPOCH} characters among "
            "A-Z a-z 0-9 - . _ ~"
        )
    return epoch


def _check_offset(offset: object) -> int:
    if type(offset) is not int:
        raise ValueError(f"offset {_show(offset)} is not valid: use an int from 0 to {MAX_OFFSET}")
    if not 0 <= offset <= MAX_OFFSET:
        shown = offset if -(10**20) < offset < 10**20 else "(huge)"
        raise ValueError(f"offset {shown} is out of range: use an int from 0 to {MAX_OFFSET}")
    return offset


def _show(value: object) -> str:
    """A client's value, for an error message: a string shortened (it may be huge), a
    number as it is when short, anything else by its type."""
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    if type(value) in (float, bool) or (type(value) is int and abs(value) < 10**20):
        return repr(value)
    return f"of type {type(value).__name__}"


@dataclass(frozen=True, slots=True)
class Position:
    """Where a reader is in a group's stream: the last offset it has seen, in an epoch.

    Immutable and hashable. Positions of the same epoch compare by offset; comparing
    positions of different epochs raises `ValueError` (they have no order: check the
    epoch first). ``str(position)`` is the short form ``"<offset>:<epoch>"``;
    `as_dict` the JSON form; `parse` reads either back, checked.
    """

    epoch: str
    offset: int

    def __post_init__(self) -> None:
        _check_epoch(self.epoch)
        _check_offset(self.offset)

    @classmethod
    def parse(cls, value: object) -> Position:
        """The position a client sent: a `Position`, a ``{"epoch", "offset"}`` dict, or
        the short string ``"<offset>:<epoch>"``.

        Raises `ValueError` naming the accepted forms for anything else: another type, a
        dict with other keys, a bool or negative or too large offset, a bad epoch.
        """
        if isinstance(value, Position):
            return value
        if isinstance(value, str):
            match = _SHORT.fullmatch(value) if len(value) <= 17 + _MAX_EPOCH else None
            if match is None:
                raise ValueError(f"position {_show(value)} is not valid: send {_FORMS}")
            offset = int(match[1])
            if offset > MAX_OFFSET:
                raise ValueError(
                    f"position {_show(value)} has an offset beyond {MAX_OFFSET}: send {_FORMS}"
                )
            return cls(match[2], offset)
        if isinstance(value, dict):
            if set(value) != {"epoch", "offset"}:
                keys = ", ".join(_show(key) for key in list(value)[:4])
                raise ValueError(f"position dict has keys {keys}: send {_FORMS}")
            try:
                return cls(_check_epoch(value["epoch"]), _check_offset(value["offset"]))
            except ValueError as exc:
                raise ValueError(f"{exc}; send {_FORMS}") from None
        raise ValueError(f"position of type {type(value).__name__} is not valid: send {_FORMS}")

    def as_dict(self) -> dict[str, Any]:
        """``{"epoch": ..., "offset": ...}``, for JSON."""
        return {"epoch": self.epoch, "offset": self.offset}

    def __str__(self) -> str:
        return f"{self.offset}:{self.epoch}"

    def _same_epoch(self, other: Position) -> None:
        if other.epoch != self.epoch:
            raise ValueError(
                f"positions {self} and {other} are of different epochs and have no order: "
                "compare .epoch first (a position from another epoch cannot be recovered)"
            )

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Position):
            return NotImplemented
        self._same_epoch(other)
        return self.offset < other.offset

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Position):
            return NotImplemented
        self._same_epoch(other)
        return self.offset <= other.offset

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Position):
            return NotImplemented
        self._same_epoch(other)
        return self.offset > other.offset

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Position):
            return NotImplemented
        self._same_epoch(other)
        return self.offset >= other.offset
