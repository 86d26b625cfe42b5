"""Who is in which group, and where each member is in the group's log. Sans-I/O.

No awaits, no sockets, no clock: the layer (``nexios.channels.layer``) does the I/O and
calls in here to change state, so every transition below is unit-tested on its own.

A **member** is one connection, held through a narrow `Sink` (never the connection
class: the channels do not import ``nexios.websockets``). A **group** has a log
(``nexios.channels.log.GroupLog``) and ``delivered``, the last offset the layer has
fanned out to it in this process. Each member of a group is either

- **live**: it has every entry up to ``delivered``; fan-out writes the next one to its
  socket at once (when the socket takes it), or
- **behind**, with a *cursor*: the last offset it has been sent. Its writer sends it
  the entries after the cursor from the log, as its socket drains, and makes it live
  again once the cursor reaches ``delivered``. Nothing is copied per member: a cursor
  is an int into the shared log.

A member whose cursor falls below the log's first entry has *fallen off*: the entries
it needs are gone, and its slow-consumer policy decides (see `POLICIES`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal, Protocol, get_args

from nexios.channels.log import GroupLog
from nexios.types import Message

__all__ = [
    "EVERYONE",
    "LEGACY_POLICIES",
    "POLICIES",
    "Group",
    "Member",
    "Registry",
    "Sink",
    "SlowConsumerPolicy",
    "policy_of",
    "skips",
]

#: What happens to a member that falls off the end of a group's log: ``"close"``
#: (close with 1013: the client reconnects and resumes, learning what it lost) or
#: ``"skip"`` (jump to the newest entry, count and announce what was missed: for feeds of
#: latest values). ``"drop_oldest"`` and ``"drop_newest"``, the names of the earlier
#: bounded outbox, mean ``"skip"``: a log cannot keep old entries for one member.
SlowConsumerPolicy = Literal["close", "skip", "drop_oldest", "drop_newest"]
POLICIES: tuple[str, ...] = get_args(SlowConsumerPolicy)
LEGACY_POLICIES = {"drop_oldest": "skip", "drop_newest": "skip"}


def policy_of(name: str) -> Literal["close", "skip"]:
    """The policy a name means; ValueError naming the choices for an unknown one."""
    if name not in POLICIES:
        raise ValueError(
            f"Unknown slow-consumer policy {name!r}: use 'close' or 'skip' "
            "('drop_oldest' and 'drop_newest' are kept as names for 'skip')."
        )
    return "close" if name == "close" else "skip"


class Sink(Protocol):
    """What the channels need of a connection."""

    @property
    def id(self) -> str: ...

    def send_nowait(self, message: Message, frame: bytes | None = None) -> bool:
        """Send now if no waiting is needed; False (nothing sent) otherwise."""

    def send(self, message: Message) -> Awaitable[None]:
        """Send, waiting for room; raises when the connection is gone."""

    def close(self, code: int = 1000, reason: str | None = None) -> Awaitable[None]: ...


#: In `Group.skip`: an entry nobody here is to be sent (they had it already).
EVERYONE: Any = object()


def skips(skipped: object, member: Member) -> bool:
    """Whether an entry whose `Group.skip` value is ``skipped`` is not for ``member``."""
    return skipped is EVERYONE or skipped is member


class Member:
    """One connection's place in the channels: its groups, and what waits for it."""

    __slots__ = (
        "behind",
        "closed",
        "direct",
        "dropped",
        "encoding",
        "groups",
        "held",
        "id",
        "inflight",
        "maxsize",
        "missed",
        "on_release",
        "pace_since",
        "policy",
        "replay",
        "sink",
        "slow",
        "writer",
    )

    def __init__(
        self,
        sink: Sink,
        *,
        maxsize: int = 256,
        policy: str = "close",
        encoding: str = "auto",
        held: bool = False,
    ) -> None:
        if maxsize < 1:
            raise ValueError("outbox_size must be at least 1.")
        self.sink = sink
        self.id: str = sink.id
        self.maxsize = maxsize
        self.policy: Literal["close", "skip"] = policy_of(policy)
        self.encoding = encoding
        # The groups joined, each with whether its messages go in envelopes.
        self.groups: dict[Group, bool] = {}
        # The groups this member is behind in (its cursor is in group.behind).
        self.behind: dict[Group, None] = {}
        # Entries to send before continuing from a group's cursor (a resume that read
        # part of its past from a remote log), by group.
        self.replay: dict[Group, deque[Any]] = {}
        # Messages outside any log (to this connection by id, or published while the
        # broker could not log them), when they could not be sent at once.
        # Each with the (group, offset) pairs it must wait for: what was fanned out to
        # the groups it was behind in when it was queued goes first (arrival order).
        self.direct: deque[tuple[Message, tuple[tuple[Group, int], ...]]] = deque()
        # Held while its handshake is answered: nothing is sent before the accept.
        self.held = held
        self.closed = False
        self.writer: Any = None  # the asyncio task sending what waits, while one runs
        self.dropped = 0  # direct messages dropped (its queue was full)
        self.missed = 0  # log entries it never got (fell off with "skip", or lost)
        # When it began holding a publisher back (the layer's clock), and whether it
        # has held one back for too long: then it paces nobody until it catches up.
        self.pace_since: float | None = None
        self.slow = False
        self.on_release: Callable[[], None] | None = None
        # The group entry its writer is sending right now (it may be skipped meanwhile).
        self.inflight: tuple[Group, int] | None = None

    def release(self) -> None:
        """The connection is accepted: start sending what waits."""
        self.held = False
        if self.on_release is not None:
            self.on_release()

    @property
    def waiting(self) -> bool:
        """Whether anything waits to be sent to it (then new messages queue behind)."""
        return bool(self.behind or self.direct or self.held or self.writer is not None)

    def __repr__(self) -> str:
        return f"<Member {self.id} groups={len(self.groups)} behind={len(self.behind)}>"


class Group:
    """One group in this process: its log, its members, and how far fan-out has gone."""

    __slots__ = (
        "behind",
        "delivered",
        "fanning",
        "first_seen",
        "live",
        "log",
        "name",
        "progress",
        "skip",
    )

    def __init__(self, name: str, log: GroupLog) -> None:
        self.name = name
        self.log = log
        # The last offset fanned out here: live members have every entry up to it.
        self.delivered = log.top.offset
        self.first_seen = log.first
        # Live members, each with whether it wants envelopes. Insertion-ordered.
        self.live: dict[Member, bool] = {}
        # Members behind, each with its cursor (the last offset it was sent).
        self.behind: dict[Member, int] = {}
        # True while a fan-out of this group is under way and has let the loop run.
        self.fanning = False
        # A future the layer resolves when a behind member makes progress (pacing).
        self.progress: Any = None
        # Entries not to send to one member (the publisher excluded it), or to anyone
        # (they had it already), by offset; dropped once the log no longer holds them.
        self.skip: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.live) + len(self.behind)

    def members(self) -> Iterator[Member]:
        yield from self.live
        yield from self.behind

    def lag(self, member: Member) -> int:
        """How many entries ``member`` has yet to be sent (0 when live)."""
        cursor = self.behind.get(member)
        return 0 if cursor is None else self.delivered - cursor

    def __repr__(self) -> str:
        return (
            f"<Group {self.name!r} at {self.delivered} live={len(self.live)} "
            f"behind={len(self.behind)}>"
        )


class Registry:
    """Groups and members of one layer; every change of membership and cursor."""

    __slots__ = ("by_id", "groups", "members")

    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}
        self.members: dict[Sink, Member] = {}
        self.by_id: dict[str, set[Member]] = {}

    def add_member(self, member: Member) -> None:
        self.members[member.sink] = member
        self.by_id.setdefault(member.id, set()).add(member)

    def remove_member(self, member: Member) -> list[Group]:
        """Forget ``member``; return the groups it leaves empty (to unsubscribe)."""
        member.closed = True
        self.members.pop(member.sink, None)
        ids = self.by_id.get(member.id)
        if ids is not None:
            ids.discard(member)
            if not ids:
                del self.by_id[member.id]
        emptied = []
        for group in list(member.groups):
            if self.leave(member, group):
                emptied.append(group)
        member.direct.clear()
        return emptied

    def join(self, member: Member, group: Group, *, envelope: bool, cursor: int | None) -> None:
        """Put ``member`` in ``group``: live (``cursor`` None or at ``delivered``) or
        behind from ``cursor``. A member held, or with messages waiting, starts behind,
        so that nothing overtakes what waits. Joining again changes the envelope and
        the cursor."""
        group.live.pop(member, None)
        group.behind.pop(member, None)
        member.groups[group] = envelope
        member.replay.pop(group, None)
        if cursor is None:
            cursor = group.delivered
        if cursor >= group.delivered and not member.held:
            member.behind.pop(group, None)
            group.live[member] = envelope
        else:
            group.behind[member] = min(cursor, group.delivered)
            member.behind[group] = None

    def leave(self, member: Member, group: Group) -> bool:
        """Take ``member`` out of ``group``; True if the group is now empty here."""
        member.groups.pop(group, None)
        member.behind.pop(group, None)
        member.replay.pop(group, None)
        group.live.pop(member, None)
        group.behind.pop(member, None)
        if not group.live and not group.behind and self.groups.get(group.name) is group:
            del self.groups[group.name]
            return True
        return False

    @staticmethod
    def fall_behind(member: Member, group: Group, cursor: int) -> None:
        """A live member's socket did not take entry ``cursor + 1``: it is behind."""
        if group.live.pop(member, None) is not None:
            group.behind[member] = cursor
            member.behind[group] = None

    @staticmethod
    def caught_up(member: Member, group: Group) -> bool:
        """Make ``member`` live in ``group`` if its cursor reached ``delivered``."""
        cursor = group.behind.get(member)
        if cursor is None or cursor < group.delivered or group in member.replay:
            return False
        del group.behind[member]
        member.behind.pop(group, None)
        group.live[member] = member.groups.get(group, False)
        return True

    @staticmethod
    def fallen_off(group: Group) -> list[Member]:
        """The behind members whose next entry the log no longer holds."""
        first = group.log.first
        return [m for m, cursor in group.behind.items() if cursor < first - 1]
