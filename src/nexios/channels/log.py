"""Positions and the per-group log: what a group recently said, and where each reader is.

Sans-I/O: no sockets, no awaits, no clock. Every method that needs the time takes it
as ``now`` (see *Time* below). Nothing in here does I/O, so it is unit-tested on its
own, and the layer, the registry's cursors and a future Redis-backed log share its
vocabulary.

**Positions.** Every message appended to a group's log gets the next *offset* (the first
is 1; a log with no message is at 0). The *epoch* names the stream those offsets count
in, and changes whenever its past is lost: a memory log gets a new epoch each time it is
created (so each process start, and each time `Logs` forgets an idle log), a Redis
stream will store its epoch beside it. A position is only meaningful with its epoch:
offset 57 of another epoch says nothing about this one.

**The string form** a client sees is ``"<offset>:<epoch>"``, e.g. ``"57:3f9c2a10b"``:
the offset in plain decimal first, then a colon, then the epoch, which is 1 to 64
characters from the URL-unreserved set (``A-Z a-z 0-9 - . _ ~``). The offset comes first
so that parsing splits at the first colon and never has to guess where a number ends;
the whole string needs no escaping in JSON, and none in a URL query or path (RFC 3986
allows ``:`` there, and a string that starts with a digit cannot be read as a URL
scheme). Offsets are at most 2**53 - 1 (`MAX_OFFSET`) so that the dict form
``{"epoch": ..., "offset": ...}`` survives a JavaScript client's numbers.

**Time.** `Entry.time` is the ``now`` passed to `GroupLog.append`, which the layer is to
read from ``time.monotonic()``, because it only serves to expire entries by age, and a
wall clock that steps (NTP, an operator) would expire a whole log at once or keep
it forever. A caller that wants a wall-clock timestamp for display converts once
(``time.time() - time.monotonic() + entry.time``). A log keeps its times non-decreasing:
an append whose ``now`` is earlier than the last one is recorded at the last one's time.

**Bounds.** A `GroupLog` holds at most ``max_count`` entries and ``max_bytes`` of payload
(``len(body)`` summed; the newest entry is always kept, even when it alone is larger),
and drops entries ``max_age`` seconds after they were appended. A reader (a recovering
client, or a member's cursor) that asks for an offset the log no longer holds is told
so, never handed a partial history as if it were whole.
"""

from __future__ import annotations

import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

__all__ = [
    "MAX_OFFSET",
    "Bounds",
    "Entry",
    "GroupLog",
    "Logs",
    "NotCovered",
    "PayloadKind",
    "Position",
    "Recovery",
]

PayloadKind = Literal["json", "text", "bytes"]
NotCovered = Literal["epoch", "trimmed", "future"]

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


class Entry(NamedTuple):
    """One logged message: its offset (the epoch is its log's), the payload as the layer
    encoded it once (``kind`` "json", "text" or "bytes", and ``body``), and ``time``, the
    monotonic ``now`` it was appended at. Immutable, shared by every reader."""

    offset: int
    kind: PayloadKind
    body: bytes
    time: float


_UNSET: Any = object()
#: The default of an override not given (`Logs.configure`, `ChannelLayer.configure`).
UNSET: Any = _UNSET


def given_bounds(max_count: Any, max_bytes: Any, max_age: Any) -> dict[str, Any]:
    """The bounds an override names: those not left `UNSET`."""
    return {
        name: value
        for name, value in (
            ("max_count", max_count),
            ("max_bytes", max_bytes),
            ("max_age", max_age),
        )
        if value is not _UNSET
    }


@dataclass(frozen=True, slots=True)
class Bounds:
    """How much a log keeps: at most ``max_count`` entries, ``max_bytes`` of payload,
    each for ``max_age`` seconds. ``None`` lifts a bound; count or bytes must bound it."""

    max_count: int | None = 1000
    max_bytes: int | None = 8 * 1024 * 1024
    max_age: float | None = 300.0

    def __post_init__(self) -> None:
        for name in ("max_count", "max_bytes"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"{name}={value!r}: use an int of at least 1, or None")
        age = self.max_age
        if age is not None and (
            isinstance(age, bool) or not isinstance(age, int | float) or not 0 < age < 1e12
        ):
            raise ValueError(f"max_age={age!r}: use a positive number of seconds, or None")
        if self.max_count is None and self.max_bytes is None:
            raise ValueError(
                "max_count=None and max_bytes=None leave the log unbounded: "
                "set max_count=... or max_bytes=... (or both)"
            )

    def replace(
        self,
        *,
        max_count: int | None = _UNSET,
        max_bytes: int | None = _UNSET,
        max_age: float | None = _UNSET,
    ) -> Bounds:
        """These bounds with the given ones changed (the others kept), checked."""
        return Bounds(
            self.max_count if max_count is _UNSET else max_count,
            self.max_bytes if max_bytes is _UNSET else max_bytes,
            self.max_age if max_age is _UNSET else max_age,
        )


@dataclass(frozen=True, slots=True)
class Recovery:
    """The answer to `GroupLog.since`: either every entry after the reader's position
    (``recovered`` True, ``reason`` None, possibly no entry at all), or none of them
    (``recovered`` False) with ``reason``:

    - ``"epoch"``: the position is of another epoch: the stream it counted in is gone;
    - ``"trimmed"``: the log no longer reaches back to the entry after the position;
    - ``"future"``: the offset is beyond the top (this log never got that far).

    ``top`` is the log's last position either way: where the reader now stands once it
    has the entries (or, not recovered, where it starts over).
    """

    recovered: bool
    entries: Sequence[Entry]
    top: Position
    reason: NotCovered | None = None


class GroupLog:
    """One group's recent messages, in memory, bounded by count, bytes and age.

    Entries sit in a list from index ``_head`` on; the entry at offset ``o`` is at index
    ``_head + o - first``, so reading any offset is O(1). Dropping the oldest entry
    clears its slot and moves ``_head``; the dead slots are cut off in one slice once
    they are as many as the live ones (and at least 64), so appending and dropping are
    O(1) amortised and the list holds at most about twice the live entries.
    """

    __slots__ = ("_bounds", "_bytes", "_head", "_items", "_top", "epoch")

    def __init__(self, epoch: str, bounds: Bounds | None = None, *, start: int = 0) -> None:
        """A log of ``epoch`` whose first append gets offset ``start + 1``: 0 for a new
        stream, or where a copy of a stream kept elsewhere (Redis) begins."""
        self.epoch: str = _check_epoch(epoch)
        self._bounds = bounds if bounds is not None else Bounds()
        self._items: list[Entry | None] = []
        self._head = 0
        self._bytes = 0
        self._top = Position(epoch, _check_offset(start))

    # -- looking ------------------------------------------------------------------------

    @property
    def bounds(self) -> Bounds:
        """The log's bounds. Setting new ones applies count and bytes at once, and age
        at the next `append`, `trim` or `since`."""
        return self._bounds

    @bounds.setter
    def bounds(self, bounds: Bounds) -> None:
        self._bounds = bounds
        self._drop_over()

    @property
    def top(self) -> Position:
        """The last position (offset 0 before any append). O(1), no allocation."""
        return self._top

    @property
    def first(self) -> int:
        """The offset of the oldest entry held; ``top.offset + 1`` when none is. A reader
        whose last offset is below ``first - 1`` has fallen off the log. O(1)."""
        return self._top.offset - (len(self._items) - self._head) + 1

    @property
    def nbytes(self) -> int:
        """Payload bytes held (the sum of ``len(body)``). O(1)."""
        return self._bytes

    def __len__(self) -> int:
        """Entries held. O(1)."""
        return len(self._items) - self._head

    def __iter__(self) -> Iterator[Entry]:
        """The entries held, oldest first."""
        return iter(self._items[self._head :])  # type: ignore[arg-type]  # live slots

    def __repr__(self) -> str:
        return f"<GroupLog {self._top} first={self.first} len={len(self)} bytes={self._bytes}>"

    def entry(self, offset: int) -> Entry | None:
        """The entry at ``offset``, or None when the log does not hold it (trimmed, not
        yet appended, or 0). O(1), no allocation."""
        index = offset - self.first
        if index < 0 or offset > self._top.offset:
            return None
        return self._items[self._head + index]

    def after(self, offset: int, limit: int | None = None) -> list[Entry] | None:
        """Up to ``limit`` entries after ``offset`` (all of them for None), oldest first:
        what a cursor that has seen ``offset`` reads next. ``[]`` when it is at the top;
        None when the log cannot continue from ``offset``: the next entry was trimmed
        (the reader fell off the log) or ``offset`` is beyond the top. O(k) for the k
        entries returned; the rest of the log is not copied."""
        first = self.first
        if offset < first - 1 or offset > self._top.offset:
            return None
        start = self._head + offset + 1 - first
        end = len(self._items) if limit is None else start + max(limit, 0)
        return self._items[start:end]  # type: ignore[return-value]  # live slots only

    def since(self, position: Position, now: float) -> Recovery:
        """Everything after ``position``, or why not: the recovery of a client that
        comes back with the last position it saw. Drops expired entries first, so an
        entry older than ``max_age`` is never recovered. O(k) for k entries returned."""
        self.trim(now)
        top = self._top
        if position.epoch != self.epoch:
            return Recovery(False, (), top, "epoch")
        if position.offset > top.offset:
            return Recovery(False, (), top, "future")
        entries = self.after(position.offset)
        if entries is None:
            return Recovery(False, (), top, "trimmed")
        return Recovery(True, entries, top)

    # -- changing -----------------------------------------------------------------------

    def append(self, kind: PayloadKind, body: bytes, now: float) -> Position:
        """Log a message (``kind`` and ``body`` as the layer encoded it) appended at
        ``now``; return its position. Drops what the bounds no longer allow, oldest
        first (never the new entry). O(1) amortised; allocates one `Entry` and one
        `Position`."""
        items = self._items
        if len(items) > self._head:
            last = items[-1]
            if last is not None and now < last.time:
                now = last.time  # times stay ordered: trimming by age reads the head
        offset = self._top.offset + 1
        items.append(_new_entry(Entry, (offset, kind, body, now)))
        self._bytes += len(body)
        # Built without __post_init__: the epoch was checked once, the offset is ours.
        self._top = top = _new_position(Position)
        _set(top, "epoch", self.epoch)
        _set(top, "offset", offset)
        bounds = self._bounds
        if (bounds.max_count is not None and len(items) - self._head > bounds.max_count) or (
            bounds.max_bytes is not None and self._bytes > bounds.max_bytes
        ):
            self._drop_over()
        if bounds.max_age is not None:
            oldest = items[self._head]
            if oldest is not None and oldest.time <= now - bounds.max_age:
                self.trim(now)
        return top

    def trim(self, now: float) -> int:
        """Drop the entries older than ``max_age`` at ``now`` (appended at or before
        ``now - max_age``); return how many. O(1) amortised per entry dropped."""
        max_age = self._bounds.max_age
        if max_age is None:
            return 0
        cutoff = now - max_age
        items = self._items
        dropped = 0
        while self._head < len(items):
            oldest = items[self._head]
            if oldest is None or oldest.time > cutoff:
                break
            self._drop_oldest()
            dropped += 1
        self._compact()
        return dropped

    def _drop_over(self) -> None:
        """Drop the oldest entries until count and bytes are within bounds, keeping the
        newest entry whatever its size."""
        bounds = self._bounds
        items = self._items
        if bounds.max_count is not None:
            while len(items) - self._head > bounds.max_count:
                self._drop_oldest()
        if bounds.max_bytes is not None:
            while self._bytes > bounds.max_bytes and len(items) - self._head > 1:
                self._drop_oldest()
        self._compact()

    def _drop_oldest(self) -> None:
        items = self._items
        oldest = items[self._head]
        if oldest is not None:
            self._bytes -= len(oldest.body)
        items[self._head] = None
        self._head += 1

    def _compact(self) -> None:
        head = self._head
        if head >= 64 and head * 2 >= len(self._items):
            del self._items[:head]
            self._head = 0


_new_entry = tuple.__new__
_new_position = object.__new__
_set = object.__setattr__


def _new_epoch_factory() -> Callable[[], str]:
    """Epochs for memory logs: a random prefix drawn once per `Logs` (once per process
    start, in practice) and a counter, so a log created again in the same process never
    reuses an epoch, and a log of another process start shares none either."""
    prefix = secrets.token_hex(6)
    count = 0

    def new_epoch() -> str:
        nonlocal count
        count += 1
        return f"{prefix}{count:x}"

    return new_epoch


class Logs:
    """Every group's log in this process, with app-wide bounds and per-group overrides.

    A group's log is created on its first `append` (or `log`, `since`), with a fresh
    epoch. Memory is bounded on two levels. Each log holds what its `Bounds` allow.
    The logs themselves are forgotten by `sweep`, which the layer is to call now and
    then (every few seconds): it forgets each log that is empty at ``now`` (every entry
    expired) and unused for ``forget_after`` seconds (not appended to nor asked for with
    `log` or `since`), unless its group is in ``keep``. So at any time the logs held are
    those used in the last ``forget_after`` seconds (plus one sweep interval), those of
    the kept groups, and those still holding entries (only a group with ``max_age=None``
    keeps entries while idle, as many as its count and bytes bounds allow, until
    `forget`). An empty log costs a few hundred bytes.

    Forgetting a log loses its past (an empty log still knows its top: a client at the
    top has missed nothing), so the group's next log has a new epoch, and positions of
    the old one answer ``"epoch"``. `sweep` costs O(1) per log it forgets or looks at,
    and looks at a log kept for holding entries at most once per ``forget_after``: the
    logs are kept in order of last use.
    """

    def __init__(
        self,
        *,
        max_count: int | None = 1000,
        max_bytes: int | None = 8 * 1024 * 1024,
        max_age: float | None = 300.0,
        forget_after: float = 3600.0,
        new_epoch: Callable[[], str] | None = None,
    ) -> None:
        self.defaults = Bounds(max_count, max_bytes, max_age)
        if isinstance(forget_after, bool) or not (
            isinstance(forget_after, int | float) and 0 <= forget_after < 1e12
        ):
            raise ValueError(f"forget_after={forget_after!r}: use a number of seconds >= 0")
        self.forget_after = float(forget_after)
        self._new_epoch = new_epoch if new_epoch is not None else _new_epoch_factory()
        self._overrides: dict[str, dict[str, Any]] = {}
        self._logs: OrderedDict[str, GroupLog] = OrderedDict()
        self._used: dict[str, float] = {}

    def __len__(self) -> int:
        """Logs held."""
        return len(self._logs)

    def __contains__(self, group: object) -> bool:
        return group in self._logs

    def bounds(self, group: str) -> Bounds:
        """The bounds of ``group``'s log: the defaults with its overrides."""
        override = self._overrides.get(group)
        return self.defaults if override is None else self.defaults.replace(**override)

    def configure(
        self,
        group: str,
        *,
        max_count: int | None = _UNSET,
        max_bytes: int | None = _UNSET,
        max_age: float | None = _UNSET,
    ) -> Bounds:
        """Override some bounds for ``group`` (the others follow the defaults); with no
        bound given, drop its overrides. Applies to its log at once if it has one, and
        to the logs it gets later (overrides are configuration: `sweep` and `forget`
        leave them). Returns the group's bounds; raises `ValueError`, naming the fix, if
        they are invalid (and then changes nothing)."""
        given = given_bounds(max_count, max_bytes, max_age)
        bounds = self.defaults.replace(**given)  # checks before anything changes
        if given:
            self._overrides[group] = given
        else:
            self._overrides.pop(group, None)
        log = self._logs.get(group)
        if log is not None:
            log.bounds = bounds
        return bounds

    def get(self, group: str) -> GroupLog | None:
        """``group``'s log, or None; does not create one nor count as a use."""
        return self._logs.get(group)

    def log(self, group: str, now: float) -> GroupLog:
        """``group``'s log, created (with a fresh epoch) if it has none; a use."""
        log = self._logs.get(group)
        if log is None:
            log = self._logs[group] = GroupLog(self._new_epoch(), self.bounds(group))
        else:
            self._logs.move_to_end(group)
        self._used[group] = now
        return log

    def append(self, group: str, kind: PayloadKind, body: bytes, now: float) -> Position:
        """Append to ``group``'s log (created on first use); its position. O(1) amortised."""
        return self.log(group, now).append(kind, body, now)

    def since(self, group: str, position: Position, now: float) -> Recovery:
        """`GroupLog.since` on ``group``'s log. A group without a log gets one, so a
        client always learns a position it can come back with."""
        return self.log(group, now).since(position, now)

    def forget(self, group: str) -> None:
        """Drop ``group``'s log now (its past is lost: the next one has a new epoch)."""
        self._logs.pop(group, None)
        self._used.pop(group, None)

    def sweep(self, now: float, keep: Container[str] = ()) -> int:
        """Forget the logs that are empty at ``now`` and unused for ``forget_after``
        seconds, except those of the groups in ``keep`` (say, the groups with members
        here); return how many were forgotten."""
        cutoff = now - self.forget_after
        logs = self._logs
        used = self._used
        forgotten = 0
        for _ in range(len(logs)):  # each log at most once, even with forget_after=0
            group, log = next(iter(logs.items()))
            if used[group] > cutoff:
                break
            log.trim(now)
            if len(log) == 0 and group not in keep:
                del logs[group]
                del used[group]
                forgotten += 1
            else:  # still needed: look again in forget_after
                logs.move_to_end(group)
                used[group] = now
        return forgotten
