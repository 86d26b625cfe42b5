"""``nexios.channels.log``: positions, the per-group log and the registry of logs.

Sans-I/O, so plain synchronous tests: time is whatever ``now`` a test passes, exact.
Each test reads as what a user of the log would notice: a client's position read back,
a recovery that is whole or refused with its reason, a cursor reading the right entry,
memory that stays bounded. A hypothesis test runs random appends, trims and recoveries
against a plain model of the bounds.
"""

from __future__ import annotations

import dataclasses
import math
import tracemalloc
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexios.channels.log import (
    MAX_OFFSET,
    Bounds,
    Entry,
    GroupLog,
    Logs,
    PayloadKind,
    Position,
)

FORMS = ("Position", '{"epoch": str, "offset": int}', '"<offset>:<epoch>"')


def counter_epochs() -> Any:
    """Deterministic epochs for `Logs`: e1, e2, ..."""
    count = 0

    def new_epoch() -> str:
        nonlocal count
        count += 1
        return f"e{count}"

    return new_epoch


def filled(n: int, *, epoch: str = "ep", body: bytes = b"m", **bounds: Any) -> GroupLog:
    log = GroupLog(epoch, Bounds(**bounds))
    for i in range(n):
        log.append("bytes", body, float(i))
    return log


def offsets(entries: Any) -> list[int]:
    return [e.offset for e in entries]


# -- Position ---------------------------------------------------------------------------


def test_position_short_form_is_offset_colon_epoch_and_parses_back() -> None:
    position = Position("3f9c2a10b", 57)
    assert str(position) == "57:3f9c2a10b"
    assert Position.parse("57:3f9c2a10b") == position
    assert Position.parse(str(position)) is not position  # a new, equal value


def test_position_dict_form_survives_json_both_ways() -> None:
    position = Position("ab-c_d.e~f", MAX_OFFSET)
    wire = orjson.dumps({"since": position.as_dict(), "short": str(position)})
    back = orjson.loads(wire)
    assert Position.parse(back["since"]) == position
    assert Position.parse(back["short"]) == position


def test_position_parse_returns_a_position_as_it_is() -> None:
    position = Position("e", 0)
    assert Position.parse(position) is position


def test_position_short_form_needs_no_url_escaping() -> None:
    from urllib.parse import quote

    text = str(Position("Az09-._~", 12))
    assert quote(text, safe=":") == text  # only ":" is outside the unreserved set
    assert quote(text, safe="") == text.replace(":", "%3A")  # and it decodes back


def test_position_offset_zero_and_the_largest_offset_parse() -> None:
    assert Position.parse("0:e") == Position("e", 0)
    assert Position.parse(f"{MAX_OFFSET}:e") == Position("e", MAX_OFFSET)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "57",
        "57:",
        ":abc",
        "-1:abc",
        "+1:abc",
        " 1:abc",
        "1:abc ",
        "1:abc\n",
        "01:abc",  # not the form we give out
        "1_000:abc",  # int() would take it
        "\u0661:abc",  # an Arabic-Indic digit one, which int() would take too
        "1:ab c",
        "1:ab/c",
        "1:ab:c",
        "1:" + "a" * 65,
        f"{MAX_OFFSET + 1}:abc",
        "9" * 17 + ":abc",
        "9" * 5000 + ":abc",  # beyond int()'s digit limit: still our ValueError
        "x" * 1_000_000,
    ],
)
def test_position_parse_refuses_bad_strings_naming_the_forms(value: str) -> None:
    with pytest.raises(ValueError, match="position") as info:
        Position.parse(value)
    message = str(info.value)
    for form in FORMS:
        assert form in message
    assert len(message) < 400  # a huge input is not echoed back whole


@pytest.mark.parametrize(
    "value",
    [
        None,
        57,
        57.0,
        b"57:abc",
        ["abc", 57],
        ("abc", 57),
        {"epoch": "abc"},
        {"offset": 1},
        {"epoch": "abc", "offset": 1, "extra": 1},
        {"epoch": "abc", "offset": True},
        {"epoch": "abc", "offset": 1.0},
        {"epoch": "abc", "offset": "1"},
        {"epoch": "abc", "offset": -1},
        {"epoch": "abc", "offset": MAX_OFFSET + 1},
        {"epoch": "abc", "offset": 10**100},
        {"epoch": 5, "offset": 1},
        {"epoch": "", "offset": 1},
        {"epoch": "a:b", "offset": 1},
        {"epoch": "a" * 65, "offset": 1},
        {1: "abc", 2: 3},
        {"epoch": "a" * 1_000_000, "offset": 1},
        {"epoch": "abc", "offset": 10**5000},  # its str() would raise: not echoed
        {"epoch": ["abc"] * 100_000, "offset": 1},
        {"x" * 1_000_000: 1},
    ],
)
def test_position_parse_refuses_other_values_naming_the_forms(value: object) -> None:
    with pytest.raises(ValueError, match="send a Position") as info:
        Position.parse(value)
    message = str(info.value)
    for form in FORMS:
        assert form in message
    assert len(message) < 400


@pytest.mark.parametrize(
    ("epoch", "offset"),
    [("", 1), ("a:b", 1), ("é", 1), ("e", -1), ("e", MAX_OFFSET + 1), ("e", True), ("e", 1.0)],
)
def test_position_refuses_a_value_it_could_not_write_out(epoch: Any, offset: Any) -> None:
    with pytest.raises(ValueError, match="use"):
        Position(epoch, offset)


def test_positions_of_one_epoch_compare_by_offset() -> None:
    a, b = Position("e", 2), Position("e", 10)  # "10" < "2" as strings: not how they compare
    assert a < b
    assert a <= b
    assert b > a
    assert b >= a
    assert max(a, b) is b
    assert sorted([b, a]) == [a, b]


def test_positions_of_different_epochs_have_no_order_and_say_so() -> None:
    with pytest.raises(ValueError, match=r"compare \.epoch first"):
        _ = Position("e1", 1) < Position("e2", 5)
    with pytest.raises(ValueError, match="different epochs"):
        _ = Position("e1", 1) >= Position("e2", 5)
    assert Position("e1", 1) != Position("e2", 1)
    with pytest.raises(TypeError):
        _ = Position("e", 1) < 2  # type: ignore[operator]


def test_position_is_an_immutable_hashable_value() -> None:
    position = Position("e", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        position.offset = 2  # type: ignore[misc]
    assert {position: "seen"}[Position("e", 1)] == "seen"
    assert not hasattr(position, "__dict__")


# -- Bounds -----------------------------------------------------------------------------


def test_bounds_default_to_1000_messages_8_mib_and_five_minutes() -> None:
    assert Bounds() == Bounds(max_count=1000, max_bytes=8 * 1024 * 1024, max_age=300.0)


def test_bounds_need_count_or_bytes_and_say_which_to_set() -> None:
    with pytest.raises(ValueError, match=r"set max_count=\.\.\. or max_bytes=\.\.\."):
        Bounds(max_count=None, max_bytes=None)
    assert Bounds(max_count=None, max_age=None).max_bytes == 8 * 1024 * 1024


@pytest.mark.parametrize(
    ("bounds", "match"),
    [
        ({"max_count": 0}, "max_count=0: use an int of at least 1"),
        ({"max_count": -5}, "max_count=-5"),
        ({"max_count": True}, "max_count=True"),
        ({"max_count": 1.5}, "max_count=1.5"),
        ({"max_bytes": 0}, "max_bytes=0: use an int of at least 1"),
        ({"max_bytes": "8MiB"}, "max_bytes='8MiB'"),
        ({"max_age": 0}, "max_age=0: use a positive number of seconds"),
        ({"max_age": -1.0}, "max_age=-1.0"),
        ({"max_age": math.nan}, "max_age=nan"),
        ({"max_age": math.inf}, "max_age=inf"),
        ({"max_age": "300"}, "max_age='300'"),
    ],
)
def test_bounds_refuse_bad_values_naming_the_fix(bounds: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Bounds(**bounds)


def test_a_log_refuses_an_epoch_a_client_could_not_send_back() -> None:
    with pytest.raises(ValueError, match="epoch 'a b' is not valid: use 1 to 64 characters"):
        GroupLog("a b")


# -- GroupLog: append and since ---------------------------------------------------------


def test_an_empty_log_is_at_offset_zero_and_covers_exactly_that() -> None:
    log = GroupLog("ep")
    assert log.top == Position("ep", 0)
    assert (len(log), log.first, log.nbytes) == (0, 1, 0)
    whole = log.since(Position("ep", 0), now=0.0)
    assert (whole.recovered, list(whole.entries), whole.reason) == (True, [], None)
    ahead = log.since(Position("ep", 1), now=0.0)
    assert (ahead.recovered, ahead.reason, ahead.top) == (False, "future", Position("ep", 0))
    assert log.entry(0) is None
    assert log.entry(1) is None
    assert log.after(0) == []


def test_append_numbers_messages_from_one_and_keeps_what_the_layer_encoded() -> None:
    log = GroupLog("ep")
    kinds: list[PayloadKind] = ["json", "text", "bytes"]
    positions = [log.append(kind, kind.encode(), now=10.0 + i) for i, kind in enumerate(kinds)]
    assert positions == [Position("ep", 1), Position("ep", 2), Position("ep", 3)]
    assert log.top == positions[-1]
    assert list(log) == [
        Entry(1, "json", b"json", 10.0),
        Entry(2, "text", b"text", 11.0),
        Entry(3, "bytes", b"bytes", 12.0),
    ]
    assert log.nbytes == len(b"jsontextbytes")


def test_since_returns_every_entry_after_the_position() -> None:
    log = filled(5)
    assert offsets(log.since(Position("ep", 0), now=5.0).entries) == [1, 2, 3, 4, 5]
    assert offsets(log.since(Position("ep", 3), now=5.0).entries) == [4, 5]
    assert offsets(log.since(Position("ep", 4), now=5.0).entries) == [5]
    at_top = log.since(Position("ep", 5), now=5.0)
    assert (at_top.recovered, list(at_top.entries), at_top.top) == (True, [], Position("ep", 5))
    past = log.since(Position("ep", 6), now=5.0)
    assert (past.recovered, past.reason, list(past.entries)) == (False, "future", [])


def test_since_refuses_a_position_of_another_epoch_even_in_range() -> None:
    log = filled(5)
    for offset in (0, 3, 5):
        answer = log.since(Position("an-old-epoch", offset), now=5.0)
        assert (answer.recovered, answer.reason, list(answer.entries)) == (False, "epoch", [])
        assert answer.top == Position("ep", 5)  # where the client starts over


def test_trimmed_by_count_the_log_keeps_the_newest_and_refuses_older_positions() -> None:
    log = filled(5, max_count=3)
    assert (len(log), log.first) == (3, 3)
    assert log.since(Position("ep", 0), now=5.0).reason == "trimmed"
    assert log.since(Position("ep", 1), now=5.0).reason == "trimmed"
    assert offsets(log.since(Position("ep", 2), now=5.0).entries) == [3, 4, 5]


def test_trimmed_by_bytes_the_log_holds_at_most_max_bytes_of_payload() -> None:
    log = GroupLog("ep", Bounds(max_count=None, max_bytes=10, max_age=None))
    for _ in range(4):
        log.append("bytes", b"1234", now=0.0)  # 4 bytes each: two fit in 10
    assert (len(log), log.nbytes, log.first) == (2, 8, 3)
    assert log.since(Position("ep", 1), now=0.0).reason == "trimmed"
    assert offsets(log.since(Position("ep", 2), now=0.0).entries) == [3, 4]
    log.append("bytes", b"12", now=0.0)
    assert (len(log), log.nbytes) == (3, 10)  # exactly max_bytes is within the bound


def test_a_message_larger_than_max_bytes_is_kept_alone_until_the_next() -> None:
    log = GroupLog("ep", Bounds(max_count=None, max_bytes=10, max_age=None))
    log.append("bytes", b"small", now=0.0)
    log.append("bytes", b"x" * 50, now=0.0)
    assert offsets(log) == [2]  # a member that just missed it can still read it
    assert log.nbytes == 50
    log.append("bytes", b"small", now=0.0)
    assert offsets(log) == [3]
    assert log.nbytes == 5


def test_trimmed_by_age_an_entry_lives_exactly_max_age_seconds() -> None:
    log = GroupLog("ep", Bounds(max_age=10.0))
    log.append("text", b"a", now=100.0)
    log.append("text", b"b", now=105.0)
    almost = log.since(Position("ep", 0), now=109.999)
    assert offsets(almost.entries) == [1, 2]
    expired = log.since(Position("ep", 0), now=110.0)  # 1 was appended 10 s ago: gone
    assert (expired.recovered, expired.reason) == (False, "trimmed")
    assert offsets(log.since(Position("ep", 1), now=110.0).entries) == [2]


def test_a_log_whose_entries_all_expired_still_knows_nothing_was_missed() -> None:
    log = filled(3, max_age=5.0)  # appended at 0, 1, 2
    assert log.trim(now=100.0) == 3
    assert (len(log), log.nbytes, log.first, log.top.offset) == (0, 0, 4, 3)
    caught_up = log.since(Position("ep", 3), now=100.0)
    assert (caught_up.recovered, list(caught_up.entries)) == (True, [])
    assert log.since(Position("ep", 2), now=100.0).reason == "trimmed"
    assert log.append("text", b"next", now=100.0) == Position("ep", 4)


def test_append_trims_by_age_so_a_quiet_reader_is_not_needed() -> None:
    log = GroupLog("ep", Bounds(max_age=10.0))
    for second in range(100):
        log.append("text", b"tick", now=float(second))
    assert offsets(log) == list(range(91, 101))  # the last 10 seconds


def test_a_clock_that_steps_back_does_not_reorder_or_keep_entries_forever() -> None:
    log = GroupLog("ep", Bounds(max_age=10.0))
    log.append("text", b"a", now=50.0)
    log.append("text", b"b", now=20.0)  # the caller's clock went back
    assert [e.time for e in log] == [50.0, 50.0]
    assert log.trim(now=60.0) == 2


def test_trim_without_an_age_bound_drops_nothing() -> None:
    log = filled(5, max_age=None)
    assert log.trim(now=1e9) == 0
    assert len(log) == 5


def test_since_hands_out_a_copy_later_appends_do_not_change() -> None:
    log = filled(3, max_count=3)
    got = log.since(Position("ep", 0), now=3.0).entries
    for i in range(10):
        log.append("text", b"later", now=3.0 + i)
    assert offsets(got) == [1, 2, 3]


def test_new_bounds_apply_at_once() -> None:
    log = filled(10)
    log.bounds = Bounds(max_count=4)
    assert (len(log), log.first) == (4, 7)
    log.bounds = Bounds(max_count=None, max_bytes=2)
    assert offsets(log) == [9, 10]


# -- GroupLog: cursors ------------------------------------------------------------------


def test_a_cursor_reads_every_held_offset_across_many_trims() -> None:
    log = filled(10_000, max_count=100)
    assert (log.first, log.top.offset) == (9_901, 10_000)
    for offset in range(log.first, 10_001):
        entry = log.entry(offset)
        assert entry is not None
        assert entry.offset == offset
    assert log.entry(log.first - 1) is None  # fell off
    assert log.entry(10_001) is None  # not yet
    assert log.entry(-1) is None


def test_a_cursor_reads_in_batches_and_knows_when_it_fell_off() -> None:
    log = filled(10, max_count=5)  # holds 6..10
    assert offsets(log.after(5, limit=2) or []) == [6, 7]
    assert offsets(log.after(7, limit=100) or []) == [8, 9, 10]
    assert offsets(log.after(7) or []) == [8, 9, 10]
    assert log.after(10) == []  # caught up
    assert log.after(8, limit=0) == []
    assert log.after(4) is None  # 5 is gone: the member fell off the log
    assert log.after(11) is None  # beyond the top
    assert log.after(-1) is None


def test_a_cursor_sees_new_entries_as_they_come() -> None:
    log = GroupLog("ep", Bounds(max_count=3))
    cursor = log.top.offset
    seen: list[bytes] = []
    for i in range(10):
        log.append("text", str(i).encode(), now=0.0)
        if i % 2:  # reads every other append, one entry at a time
            while (entry := log.entry(cursor + 1)) is not None:
                seen.append(entry.body)
                cursor = entry.offset
    assert seen == [str(i).encode() for i in range(10)]


# -- memory ----------------------------------------------------------------------------


def test_a_million_appends_to_a_log_bounded_at_1000_hold_1000() -> None:
    log = GroupLog("ep", Bounds(max_count=1000, max_age=None))
    body = b'{"n": 1}'
    for _ in range(1_000_000):
        log.append("json", body, 0.0)
    assert (len(log), log.first, log.top.offset) == (1000, 999_001, 1_000_000)
    assert log.nbytes == 1000 * len(body)
    assert offsets(log.after(999_998) or []) == [999_999, 1_000_000]


def test_a_log_bounded_by_bytes_alone_holds_what_fits() -> None:
    log = GroupLog("ep", Bounds(max_count=None, max_bytes=1000, max_age=None))
    for _ in range(200_000):
        log.append("bytes", b"0123456789", 0.0)
    assert (len(log), log.nbytes) == (100, 1000)


def test_a_bounded_log_stops_growing_in_memory() -> None:
    log = GroupLog("ep", Bounds(max_count=1000, max_age=None))
    body = b"shared"
    tracemalloc.start()
    try:
        for _ in range(5_000):
            log.append("bytes", body, 0.0)
        settled = tracemalloc.get_traced_memory()[0]
        for _ in range(50_000):
            log.append("bytes", body, 0.0)
        later = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # 1,000 entries take ~100 kB; ten times the appends must not take more.
    assert later - settled < 40_000


# -- Logs -------------------------------------------------------------------------------


def test_logs_create_a_group_log_on_first_append_each_with_its_own_epoch() -> None:
    logs = Logs(new_epoch=counter_epochs())
    assert logs.get("a") is None
    assert logs.append("a", "text", b"hi", now=0.0) == Position("e1", 1)
    assert logs.append("b", "text", b"hi", now=0.0) == Position("e2", 1)
    assert logs.append("a", "text", b"again", now=0.0) == Position("e1", 2)
    assert len(logs) == 2
    assert "a" in logs
    log = logs.get("a")
    assert log is not None
    assert offsets(log) == [1, 2]


def test_default_epochs_differ_between_logs_and_between_processes() -> None:
    one, other = Logs(), Logs()  # as two process starts would
    epochs = {one.log(g, 0.0).epoch for g in "abc"} | {other.log(g, 0.0).epoch for g in "abc"}
    assert len(epochs) == 6
    for epoch in epochs:
        assert Position.parse(f"1:{epoch}").epoch == epoch


def test_a_client_new_to_a_group_learns_a_position_to_come_back_with() -> None:
    logs = Logs(new_epoch=counter_epochs())
    first = logs.since("room", Position("from-another-process", 12), now=0.0)
    assert (first.recovered, first.reason, first.top) == (False, "epoch", Position("e1", 0))
    logs.append("room", "text", b"while away", now=1.0)
    back = logs.since("room", first.top, now=2.0)
    assert back.recovered
    assert [e.body for e in back.entries] == [b"while away"]


def test_logs_apply_app_wide_bounds_and_per_group_overrides() -> None:
    logs = Logs(max_count=3, max_age=None)
    assert logs.configure("firehose", max_count=1000) == Bounds(max_count=1000, max_age=None)
    for _ in range(10):
        logs.append("firehose", "text", b"x", now=0.0)
        logs.append("chat", "text", b"x", now=0.0)
    assert len(logs.get("firehose") or ()) == 10
    assert len(logs.get("chat") or ()) == 3
    assert logs.bounds("chat") == Bounds(max_count=3, max_age=None)


def test_an_override_applies_to_an_existing_log_at_once_and_can_be_dropped() -> None:
    logs = Logs(max_count=5, max_age=None)
    for _ in range(5):
        logs.append("room", "text", b"x", now=0.0)
    logs.configure("room", max_count=2)
    assert offsets(logs.get("room") or ()) == [4, 5]
    assert logs.configure("room") == logs.defaults  # nothing given: back to the defaults
    for _ in range(5):
        logs.append("room", "text", b"x", now=0.0)
    assert len(logs.get("room") or ()) == 5


def test_an_override_outlives_the_log_it_was_set_on() -> None:
    logs = Logs(max_count=5, max_age=10.0, forget_after=0.0)
    logs.configure("room", max_count=2)
    logs.append("room", "text", b"x", now=0.0)
    assert logs.sweep(now=100.0) == 1
    for _ in range(5):
        logs.append("room", "text", b"x", now=100.0)
    assert len(logs.get("room") or ()) == 2


def test_an_override_keeps_the_defaults_it_does_not_name() -> None:
    logs = Logs(max_count=10, max_bytes=100, max_age=60.0)
    assert logs.configure("g", max_age=None) == Bounds(10, 100, None)


def test_an_invalid_override_changes_nothing_and_names_the_fix() -> None:
    logs = Logs(max_count=5, max_bytes=None, max_age=None)
    logs.configure("room", max_count=7)
    with pytest.raises(ValueError, match=r"set max_count=\.\.\. or max_bytes="):
        logs.configure("room", max_count=None)
    assert logs.bounds("room").max_count == 7
    with pytest.raises(ValueError, match="max_age=-1"):
        logs.configure("other", max_age=-1)


def test_invalid_app_wide_bounds_are_refused_at_once() -> None:
    with pytest.raises(ValueError, match="max_count=0"):
        Logs(max_count=0)
    with pytest.raises(ValueError, match="forget_after=-1"):
        Logs(forget_after=-1)


def test_sweep_forgets_empty_idle_logs_and_the_next_log_has_a_new_epoch() -> None:
    logs = Logs(max_age=10.0, forget_after=60.0, new_epoch=counter_epochs())
    seen = logs.append("room", "text", b"x", now=0.0)
    assert logs.sweep(now=59.0) == 0  # used 59 s ago
    assert logs.sweep(now=60.0) == 1
    assert logs.get("room") is None
    answer = logs.since("room", seen, now=61.0)
    assert (answer.recovered, answer.reason, answer.top) == (False, "epoch", Position("e2", 0))


def test_sweep_keeps_logs_that_hold_entries_or_were_used_recently() -> None:
    logs = Logs(max_age=None, forget_after=60.0, new_epoch=counter_epochs())
    logs.append("kept", "text", b"x", now=0.0)  # no age bound: its entry stays
    logs.log("asked", now=0.0)
    logs.log("asked", now=30.0)  # a join or recovery counts as a use
    assert logs.sweep(now=60.0) == 0
    assert logs.sweep(now=90.0) == 1
    assert "kept" in logs
    assert "asked" not in logs


def test_sweep_spares_the_groups_it_is_told_to_keep() -> None:
    logs = Logs(forget_after=0.0)
    logs.log("with-members", now=0.0)
    logs.log("abandoned", now=0.0)
    assert logs.sweep(now=1.0, keep={"with-members"}) == 1
    assert "with-members" in logs
    assert logs.sweep(now=2.0) == 1


def test_forget_drops_a_log_now_and_its_positions_turn_unrecoverable() -> None:
    logs = Logs(new_epoch=counter_epochs())
    seen = logs.append("room", "text", b"x", now=0.0)
    logs.forget("room")
    logs.forget("never-there")
    assert logs.since("room", seen, now=0.0).reason == "epoch"


def test_many_groups_published_once_are_all_forgotten_in_time() -> None:
    logs = Logs(max_age=10.0, forget_after=60.0)
    for i in range(20_000):
        logs.append(f"group-{i}", "text", b"once", now=i / 1000)
    assert len(logs) == 20_000
    assert logs.sweep(now=59.9) == 0  # none unused for 60 s yet
    assert logs.sweep(now=70.0) == 10_001  # those appended in the first 10 s
    assert logs.sweep(now=80.0) == 9_999
    assert len(logs) == 0


# -- a model of the bounds --------------------------------------------------------------


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(-2, 8), st.integers(0, 12)),
        st.tuples(st.just("trim"), st.integers(-2, 8), st.just(0)),
        st.tuples(st.just("since"), st.integers(-2, 8), st.integers(0, 40)),
        st.tuples(st.just("other-epoch"), st.integers(0, 5), st.integers(0, 40)),
        st.tuples(st.just("after"), st.integers(-2, 40), st.integers(0, 5)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    bounds=st.tuples(
        st.one_of(st.none(), st.integers(1, 8)),
        st.one_of(st.none(), st.integers(1, 40)),
        st.one_of(st.none(), st.integers(1, 10).map(float)),
    ).filter(lambda b: b[0] is not None or b[1] is not None),
    ops=_ops,
)
def test_the_log_agrees_with_a_plain_model(
    bounds: tuple[int | None, int | None, float | None], ops: list[tuple[str, int, int]]
) -> None:
    """Random appends, trims, recoveries and cursor reads against a model that keeps
    every message ever appended and works out, from the bounds alone, which the log must
    still hold: a recovery is whole exactly when the model holds everything after the
    position, and then returns exactly that; otherwise it gives the right reason."""
    max_count, max_bytes, max_age = bounds
    log = GroupLog("ep", Bounds(max_count, max_bytes, max_age))
    history: list[tuple[int, bytes, float]] = []  # (offset, body, time), all ever
    first = 1  # the model's oldest held offset
    now = 0.0

    def expire(at: float) -> None:
        nonlocal first
        if max_age is not None:
            while first <= len(history) and history[first - 1][2] <= at - max_age:
                first += 1

    def held() -> list[tuple[int, bytes, float]]:
        return history[first - 1 :]

    for op, a, b in ops:
        if op == "append":
            now += a
            body = b"x" * b
            at = now
            if held() and at < held()[-1][2]:
                at = held()[-1][2]
            assert log.append("bytes", body, now) == Position("ep", len(history) + 1)
            history.append((len(history) + 1, body, at))
            if max_count is not None:
                first = max(first, len(history) - max_count + 1)
            if max_bytes is not None:
                while sum(len(e[1]) for e in held()) > max_bytes and len(held()) > 1:
                    first += 1
            expire(at)
        elif op == "trim":
            now += a
            before = first
            expire(now)
            assert log.trim(now) == first - before
        elif op == "since":
            now += a
            expire(now)
            answer = log.since(Position("ep", b), now)
            top = len(history)
            if b > top:
                assert (answer.recovered, answer.reason) == (False, "future")
            elif b < first - 1:
                assert (answer.recovered, answer.reason) == (False, "trimmed")
            else:
                assert answer.recovered
                assert offsets(answer.entries) == list(range(b + 1, top + 1))
        elif op == "other-epoch":
            now += a
            expire(now)
            answer = log.since(Position("other", b), now)
            assert (answer.recovered, answer.reason) == (False, "epoch")
        else:  # a cursor read, which does not trim
            got = log.after(a, limit=b)
            if a < first - 1 or a > len(history):
                assert got is None
            else:
                assert offsets(got or []) == list(range(a + 1, min(a + b, len(history)) + 1))
        assert log.top == Position("ep", len(history))
        assert (log.first, len(log)) == (first, len(held()))
        assert log.nbytes == sum(len(e[1]) for e in held())
        assert [(e.offset, e.body, e.time) for e in log] == held()
        for offset in range(first - 2, len(history) + 2):
            entry = log.entry(offset)
            assert (entry is not None) == (first <= offset <= len(history))


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["append", "log", "sweep", "forget"]),
            st.sampled_from("abc"),
            st.integers(0, 8),
        ),
        max_size=50,
    )
)
def test_sweeping_logs_never_loses_what_a_client_could_still_recover(
    ops: list[tuple[str, str, int]],
) -> None:
    """Random appends, uses, sweeps and forgets over three groups: a sweep forgets only
    logs that are empty, unused for ``forget_after`` and not kept; a group's every new
    log has an epoch never seen before, so a position from a forgotten log is refused
    ("epoch"), never recovered against a stream it did not count in."""
    logs = Logs(max_count=3, max_age=15.0, forget_after=10.0)  # idle logs may hold entries
    now = 0.0
    used: dict[str, float] = {}
    epochs: dict[str, str] = {}  # the epoch of each group's current log
    seen: set[str] = set()
    last: dict[str, Position] = {}  # the last position handed out, per group
    for op, group, step in ops:
        now += step
        if op == "append":
            last[group] = logs.append(group, "text", b"x", now)
            used[group] = now
        elif op == "log":
            logs.log(group, now)
            used[group] = now
        elif op == "forget":
            logs.forget(group)
        else:
            keep = {group}
            before = {g: logs.get(g) for g in "abc"}
            logs.sweep(now, keep=keep)
            for g, log in before.items():
                if log is not None and logs.get(g) is None:  # forgotten: was it allowed?
                    assert g not in keep
                    assert len(log) == 0
                    assert now - used[g] >= 10.0
        for g in "abc":
            log = logs.get(g)
            if log is None:
                epochs.pop(g, None)
            elif epochs.get(g) != log.epoch:
                assert log.epoch not in seen  # a new log: a new epoch
                seen.add(log.epoch)
                epochs[g] = log.epoch
    for g, position in last.items():
        answer = logs.since(g, position, now)
        if position.epoch != epochs.get(g):
            assert (answer.recovered, answer.reason) == (False, "epoch")
