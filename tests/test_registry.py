"""The registry on its own: who is in which group, live or behind, and where each
cursor is. Sans-I/O: no event loop, no socket; a sink here is never written to."""

from __future__ import annotations

from typing import Any

import pytest

from nexios.channels.log import Bounds, GroupLog
from nexios.channels.registry import EVERYONE, Group, Member, Registry, policy_of, skips


class Sink:
    """Enough of a connection for the registry: an id."""

    def __init__(self, name: str) -> None:
        self.id = name

    def send_nowait(self, message: Any, frame: bytes | None = None) -> bool:
        raise AssertionError("the registry never sends")

    async def send(self, message: Any) -> None:
        raise AssertionError("the registry never sends")

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        raise AssertionError("the registry never closes")


def group_with(entries: int, bounds: Bounds | None = None) -> Group:
    log = GroupLog("ep", bounds)
    for i in range(entries):
        log.append("text", b"%d" % i, 0.0)
    group = Group("room", log)
    return group


def member(name: str = "a", **options: Any) -> Member:
    return Member(Sink(name), **options)


def test_a_member_joins_live_at_the_top_or_behind_from_a_cursor() -> None:
    registry = Registry()
    group = group_with(10)
    registry.groups["room"] = group
    live, behind = member("live"), member("behind")
    registry.add_member(live)
    registry.add_member(behind)
    registry.join(live, group, envelope=False, cursor=None)
    registry.join(behind, group, envelope=True, cursor=4)
    assert group.live == {live: False}
    assert group.behind == {behind: 4}
    assert group.lag(behind) == 6
    assert group.lag(live) == 0
    assert list(behind.behind) == [group]
    assert len(group) == 2
    # A cursor beyond what was fanned out here means "at the top".
    again = member("again")
    registry.join(again, group, envelope=False, cursor=99)
    assert again in group.live


def test_a_held_member_starts_behind_whatever_its_cursor() -> None:
    registry = Registry()
    group = group_with(3)
    accepting = member("accepting", held=True)
    registry.join(accepting, group, envelope=False, cursor=None)
    assert group.behind == {accepting: 3}
    assert accepting.waiting
    accepting.held = False
    assert Registry.caught_up(accepting, group)
    assert accepting in group.live
    assert not accepting.waiting


def test_falling_behind_and_catching_up_move_a_member_between_the_two() -> None:
    group = group_with(5)
    one = member()
    Registry().join(one, group, envelope=False, cursor=None)
    Registry.fall_behind(one, group, 4)
    assert group.behind == {one: 4}
    assert group.lag(one) == 1
    assert not Registry.caught_up(one, group)  # still one entry to go
    group.behind[one] = 5
    assert Registry.caught_up(one, group)
    assert group.live == {one: False}
    assert one.behind == {}


def test_a_member_whose_next_entry_the_log_dropped_has_fallen_off() -> None:
    group = group_with(10, Bounds(max_count=4))  # holds offsets 7..10
    ok, gone = member("ok"), member("gone")
    registry = Registry()
    registry.join(ok, group, envelope=False, cursor=6)  # next is 7: held
    registry.join(gone, group, envelope=False, cursor=5)  # next is 6: dropped
    assert Registry.fallen_off(group) == [gone]


def test_leaving_the_last_member_empties_the_group_and_says_so() -> None:
    registry = Registry()
    group = group_with(0)
    registry.groups["room"] = group
    a, b = member("a"), member("b")
    for m in (a, b):
        registry.add_member(m)
        registry.join(m, group, envelope=False, cursor=None)
    assert not registry.leave(a, group)
    assert registry.leave(b, group)
    assert "room" not in registry.groups
    # Removing a member takes it out of every group and forgets its id.
    registry.groups["room"] = group
    registry.join(a, group, envelope=False, cursor=None)
    assert registry.remove_member(a) == [group]
    assert registry.members == {b.sink: b}
    assert set(registry.by_id) == {"b"}
    assert a.closed


def test_skip_marks_and_policies() -> None:
    a, b = member("a"), member("b")
    assert skips(EVERYONE, a)
    assert skips(a, a)
    assert not skips(b, a)
    assert not skips(None, a)
    assert policy_of("close") == "close"
    for name in ("skip", "drop_oldest", "drop_newest"):
        assert policy_of(name) == "skip"
    with pytest.raises(ValueError, match="'close' or 'skip'"):
        policy_of("sometimes")
    with pytest.raises(ValueError, match="outbox_size"):
        member(maxsize=0)
