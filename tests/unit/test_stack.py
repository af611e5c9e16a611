"""Whether a stack of slices is complete: gaps named where they are, counts, DS text."""

from __future__ import annotations

import math

import pytest

from isdr.domain.stack import (
    SliceFacts,
    StackVerdict,
    check_count,
    check_geometry,
    expected_count,
    parse_decimals,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
_C, _S = math.cos(math.radians(20)), math.sin(math.radians(20))
OBLIQUE = (1.0, 0.0, 0.0, 0.0, _C, _S)  # tilted 20 degrees about the x axis
OBLIQUE_NORMAL = (0.0, -_S, _C)


def stack(
    places: list[float],
    orientation: tuple[float, float, float, float, float, float] = AXIAL,
    normal: tuple[float, float, float] = (0.0, 0.0, 1.0),
    temporal: int | None = None,
    origin: tuple[float, float, float] = (-250.0, -180.0, 0.0),
) -> list[SliceFacts]:
    """One slice at each distance (mm) along `normal`, from an origin in the plane at 0 mm."""
    return [
        SliceFacts(
            position=(
                origin[0] + d * normal[0],
                origin[1] + d * normal[1],
                origin[2] + d * normal[2],
            ),
            orientation=orientation,
            temporal_positions=temporal,
        )
        for d in places
    ]


def spaced(count: int, spacing: float = 2.5, start: float = 0.0) -> list[float]:
    return [start + i * spacing for i in range(count)]


def without(places: list[float], *removed: float) -> list[float]:
    return [d for d in places if d not in removed]


@pytest.mark.parametrize(
    ("places", "reason"),
    [
        (
            without(spaced(40), 15.0),
            "a gap between 12.5 mm and 17.5 mm along the slice normal (about 1 slice missing)",
        ),
        (
            without(spaced(40), 15.0, 17.5),
            "a gap between 12.5 mm and 20 mm along the slice normal (about 2 slices missing)",
        ),
        (
            without(spaced(40), 15.0, 50.0, 52.5, 75.0),
            "3 gaps (about 4 slices missing); the first between 12.5 mm and 17.5 mm, "
            "the second between 47.5 mm and 55 mm along the slice normal",
        ),
        (
            [*spaced(10), 23.5, *spaced(10, start=27.0)],
            "uneven spacing between 22.5 mm and 23.5 mm (1 mm where the others are 2.5 mm) "
            "(and 1 more uneven step)",
        ),
        (
            sorted([*spaced(40), 42.5]),
            "two slices at 42.5 mm along the slice normal",
        ),
    ],
)
def test_an_axial_stack_with_a_flaw_names_where_it_is(places: list[float], reason: str) -> None:
    assert check_geometry(stack(places)) == StackVerdict(complete=False, reason=reason)


def test_a_complete_axial_stack_says_how_many_slices_and_how_far_apart() -> None:
    verdict = check_geometry(stack(spaced(98)))
    assert verdict == StackVerdict(True, "", "98 slices 2.5 mm apart, no gap")


def test_a_stack_given_in_any_order_with_rounding_noise_is_complete() -> None:
    places = [d + (0.004 if i % 2 else -0.004) for i, d in enumerate(spaced(60, 0.625))]
    verdict = check_geometry(stack(list(reversed(places))))
    assert verdict.complete, verdict.reason
    assert verdict.note == "60 slices 0.625 mm apart, no gap"


def test_an_oblique_stack_with_one_slice_missing_names_where_the_gap_is() -> None:
    origin = (-250.0, 180.0 * _C, 180.0 * _S)  # in the plane through 0 mm, off the axis
    facts = stack(without(spaced(30, 3.0, 100.0), 130.0), OBLIQUE, OBLIQUE_NORMAL, origin=origin)
    verdict = check_geometry(facts)
    assert not verdict.complete
    assert "a gap between 127 mm and 133 mm" in verdict.reason
    assert "(about 1 slice missing)" in verdict.reason


def test_a_complete_oblique_stack_is_complete() -> None:
    assert check_geometry(stack(spaced(30, 3.0), OBLIQUE, OBLIQUE_NORMAL)).complete


@pytest.mark.parametrize(
    ("slices", "note"),
    [
        (stack(spaced(2)), "fewer than 3 positioned slices: not checked"),
        ([SliceFacts(None, None)] * 5, "fewer than 3 positioned slices: not checked"),
        (
            [SliceFacts((0.0, 0.0, float(i)), None) for i in range(5)],
            "fewer than 3 positioned slices: not checked",
        ),
        (
            [SliceFacts((0.0, 0.0, float(i)), (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)) for i in range(5)],
            "fewer than 3 positioned slices: not checked",
        ),
        (
            stack(spaced(3))
            + stack(spaced(3), SAGITTAL, (1.0, 0.0, 0.0))
            + stack(spaced(3), CORONAL, (0.0, 1.0, 0.0)),
            "not one stack (3 orientations): not checked",
        ),
    ],
    ids=["two slices", "no positions", "no orientations", "no normal", "a localizer"],
)
def test_a_series_that_cannot_be_judged_is_complete_with_a_note(
    slices: list[SliceFacts], note: str
) -> None:
    assert check_geometry(slices) == StackVerdict(True, "", note)


def test_slices_without_a_position_are_named_in_the_note() -> None:
    verdict = check_geometry([*stack(spaced(10)), SliceFacts(None, AXIAL)])
    note = "10 slices 2.5 mm apart, no gap, 1 without a usable position not checked"
    assert verdict == StackVerdict(True, "", note)


def test_a_complete_4d_stack_counts_positions_and_temporal_positions() -> None:
    verdict = check_geometry(stack(spaced(20) * 3, temporal=3))
    note = "20 positions 2.5 mm apart, 3 temporal positions each, no gap"
    assert verdict == StackVerdict(True, "", note)


def test_a_4d_stack_with_one_temporal_position_missing_names_the_slice() -> None:
    places = spaced(20) * 3
    places.remove(42.5)
    verdict = check_geometry(stack(places, temporal=3))
    assert verdict == StackVerdict(False, "the slice at 42.5 mm has 2 of 3 temporal positions")


def test_a_4d_series_at_one_position_is_complete() -> None:
    verdict = check_geometry(stack([12.5] * 3, temporal=3))
    assert verdict == StackVerdict(True, "", "1 position, 3 temporal positions each, no gap")


def test_a_4d_stack_with_a_fourth_slice_at_one_place_says_so() -> None:
    verdict = check_geometry(stack([*spaced(20) * 3, 5.0], temporal=3))
    assert verdict.reason == (
        "four slices at 5 mm along the slice normal where 3 temporal positions are expected"
    )


def test_two_thousand_slices_with_a_gap_are_judged() -> None:
    verdict = check_geometry(stack(without(spaced(2000, 0.5), 500.0)))
    assert verdict.reason.startswith("a gap between 499.5 mm and 500.5 mm")


@pytest.mark.parametrize(
    ("slices", "expected"),
    [
        ([SliceFacts(None, None, images_in_acquisition=98)] * 3, 98),
        ([SliceFacts(None, None, images_in_acquisition=98), SliceFacts(None, None)], 98),
        (
            [
                SliceFacts(None, None, images_in_acquisition=98),
                SliceFacts(None, None, images_in_acquisition=97),
            ],
            None,
        ),
        ([SliceFacts(None, None, images_in_acquisition=0)], None),
        (stack(spaced(20) * 3, temporal=3)[:-1], 60),
        (stack(spaced(20), temporal=1), None),
        (stack(spaced(20)), None),
        ([SliceFacts(None, None, temporal_positions=3)], None),
        ([], None),
    ],
    ids=[
        "images in acquisition",
        "stated by some slices",
        "disagreeing",
        "zero",
        "places times temporal positions",
        "one temporal position",
        "nothing stated",
        "temporal positions without positions",
        "no slices",
    ],
)
def test_the_expected_count_is_what_the_data_states(
    slices: list[SliceFacts], expected: int | None
) -> None:
    assert expected_count(slices) == expected


@pytest.mark.parametrize(
    ("received", "expected", "verdict"),
    [
        (95, 98, StackVerdict(False, "95 of 98 instances (ImagesInAcquisition)")),
        (98, 98, StackVerdict(True, "", "98 of 98 instances (ImagesInAcquisition)")),
        (
            99,
            98,
            StackVerdict(True, "", "99 instances where ImagesInAcquisition expects 98: not held"),
        ),
        (5, 0, StackVerdict(True, "", "ImagesInAcquisition expects 0 instances: not checked")),
    ],
    ids=["under", "at", "over", "nothing expected"],
)
def test_a_count_under_the_expected_one_is_incomplete(
    received: int, expected: int, verdict: StackVerdict
) -> None:
    assert check_count(received, expected, "ImagesInAcquisition") == verdict


@pytest.mark.parametrize(
    ("text", "count", "parsed"),
    [
        ("1.5\\-2\\3e1", 3, (1.5, -2.0, 30.0)),
        (" -125.5\\+.5 \\0 ", 3, (-125.5, 0.5, 0.0)),
        ("1\\0\\0\\0\\1\\0", 6, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)),
        ("1.5\\2", 3, None),
        ("1.5\\2\\3\\4", 3, None),
        ("1\\nan\\3", 3, None),
        ("1\\inf\\3", 3, None),
        ("1\\1e999\\3", 3, None),
        ("abc", 1, None),
        ("1_0\\2\\3", 3, None),
        ("", 3, None),
        ("", 1, None),
        ("1\\\\3", 3, None),
        ("1" * 100_000, 1, None),
        ("1\\" * 50_000, 3, None),
        ("1\\2\\" + " " * 100_000 + "3", 3, None),
    ],
)
def test_decimal_strings_are_parsed_only_when_exactly_count_finite_numbers(
    text: str, count: int, parsed: tuple[float, ...] | None
) -> None:
    assert parse_decimals(text, count) == parsed
