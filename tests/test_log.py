"""``nexios.channels.log``: positions, the per-group log and the registry of logs.

Sans-I/O, so plain synchronous tests. Each test reads as what a user of the log would
notice: a client's position written out and read back, hostile input refused with a
message that says what to send.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from nexios.channels.log import MAX_OFFSET, Position

FORMS = ("Position", '{"epoch": str, "offset": int}', '"<offset>:<epoch>"')


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
