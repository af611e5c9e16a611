from __future__ import annotations

import dataclasses
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isdr.scp.paths import (
    MAX_COMPONENT_LENGTH,
    SortKeys,
    instance_relpath,
    resolve_inside,
    sanitize_component,
    series_folder,
)

KEYS = SortKeys(
    patient_id="PAT1",
    study_instance_uid="1.2.3",
    series_instance_uid="1.2.3.4",
    sop_instance_uid="1.2.3.4.5",
    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
    modality="CT",
    study_description="Thorax",
    series_description="Axial 3mm",
)


def test_the_tree_is_patient_study_series_modality_instance() -> None:
    parts = instance_relpath(KEYS).parts
    assert parts[0] == "PAT1"
    assert parts[1].startswith("Thorax_")
    assert parts[2].startswith("Axial_3mm_")
    assert parts[3:] == ("CT", "1.2.3.4.5.dcm")


def test_a_follow_up_study_with_the_same_descriptions_gets_its_own_folders() -> None:
    follow_up = dataclasses.replace(KEYS, study_instance_uid="1.2.9", series_instance_uid="1.2.9.4")
    assert series_folder(follow_up).parts[1] != series_folder(KEYS).parts[1]
    assert series_folder(follow_up).parts[2] != series_folder(KEYS).parts[2]


def test_two_series_of_one_study_never_share_a_folder() -> None:
    other = dataclasses.replace(KEYS, series_instance_uid="1.2.3.5")
    assert series_folder(other) != series_folder(KEYS)


def test_hostile_values_become_harmless_names() -> None:
    assert sanitize_component("../../x", "P") == "x"
    assert sanitize_component("/", "P") == "P"
    assert sanitize_component("..", "P") == "P"
    assert sanitize_component("a\x00b\nc", "P") == "a_b_c"
    assert len(sanitize_component("y" * 10_000, "P")) == MAX_COMPONENT_LENGTH
    assert sanitize_component("", "EMPTY") == "EMPTY"
    assert len(sanitize_component("\U00010400" * 64, "P").encode()) <= 128


def test_a_path_that_could_escape_is_refused() -> None:
    with pytest.raises(ValueError, match="escapes"):
        resolve_inside(Path("/srv/in"), PurePosixPath("a/../../etc"))
    with pytest.raises(ValueError, match="escapes"):
        resolve_inside(Path("/srv/in"), PurePosixPath("/etc/passwd"))


def test_an_invalid_sop_instance_uid_keeps_a_distinct_file_name() -> None:
    one = instance_relpath(dataclasses.replace(KEYS, sop_instance_uid="1.2/3"))
    two = instance_relpath(dataclasses.replace(KEYS, sop_instance_uid="1.2_3"))
    assert one.name != two.name


tag_text = st.lists(
    st.text(max_size=20) | st.sampled_from(["/", "\\", "..", ".", "\x00", "~", "../"]),
    max_size=20,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(
    patient=tag_text,
    study=tag_text,
    series=tag_text,
    sop=tag_text,
    modality=tag_text,
    study_desc=tag_text,
    series_desc=tag_text,
)
def test_every_path_stays_inside_incoming_dir(
    patient: str,
    study: str,
    series: str,
    sop: str,
    modality: str,
    study_desc: str,
    series_desc: str,
) -> None:
    keys = SortKeys(patient, study, series, sop, "", modality, study_desc, series_desc)
    root = Path("/srv/incoming")
    relpath = instance_relpath(keys)
    assert not relpath.is_absolute()
    assert len(relpath.parts) == 5
    for part in relpath.parts:
        assert part not in ("", ".", "..")
        assert len(part.encode("utf-8", "surrogatepass")) <= 255
        assert "/" not in part and "\x00" not in part
        assert not part.startswith(".")
    assert resolve_inside(root, relpath).resolve().is_relative_to(root)


# Values a hostile sender can put in a tag: separators and dot-names, also in their
# Unicode look-alikes that NFKC folds into them; control and bidi characters; lone
# surrogates (what a decoder's surrogateescape leaves); and values far beyond any VR's
# limit (a UT holds up to 4 GB).
HOSTILE_PIECES = [
    "/", "\\", "..", ".", "\x00", "\n", "\t", " ", "~", "../", "..\\", "-", "_",
    "\uff0e", "\uff0f", "\u2024", "\u2025", "\u2215", "\u29f8", "\u202e", "\u200b",
    "\u0338", "\ufeff", "\ud800", "\udcff", "\U0001f600", "ﬁ", "CON", "NUL", ".dcm",
]  # fmt: skip
hostile_text = st.one_of(
    st.lists(
        st.sampled_from(HOSTILE_PIECES) | st.text(max_size=8) | st.characters(codec=None),
        max_size=40,
    ).map("".join),
    st.text(min_size=300, max_size=3000),
    st.sampled_from(HOSTILE_PIECES).flatmap(lambda piece: st.just(piece * 700)),
)


@settings(max_examples=300, deadline=None)
@given(value=hostile_text)
def test_a_sanitised_component_is_one_plain_name_the_file_system_takes(value: str) -> None:
    name = sanitize_component(value, "P")
    assert name and name not in (".", "..")
    assert not name.startswith((".", "-", "_")) and not name.endswith((".", "-", "_"))
    assert len(name) <= MAX_COMPONENT_LENGTH
    raw = name.encode("utf-8")  # strict: no lone surrogate survives
    assert len(raw) <= 128 and b"/" not in raw and b"\x00" not in raw
    assert sanitize_component(name, "P") == name, "sanitising is idempotent"


@settings(max_examples=200, deadline=None)
@given(first=hostile_text, second=hostile_text)
def test_two_sop_instance_uids_never_share_a_file_name(first: str, second: str) -> None:
    one = instance_relpath(dataclasses.replace(KEYS, sop_instance_uid=first)).name
    two = instance_relpath(dataclasses.replace(KEYS, sop_instance_uid=second)).name
    assert (one == two) == (first == second)


@settings(max_examples=60, deadline=None)
@given(
    patient=hostile_text,
    study_desc=hostile_text,
    series_desc=hostile_text,
    modality=hostile_text,
    sop=hostile_text,
)
def test_a_hostile_path_is_created_on_disk_inside_the_root(
    tmp_path_factory: pytest.TempPathFactory,
    patient: str,
    study_desc: str,
    series_desc: str,
    modality: str,
    sop: str,
) -> None:
    root = tmp_path_factory.mktemp("incoming").resolve()
    keys = SortKeys(patient, "1.2", "1.2.3", sop, "", modality, study_desc, series_desc)
    target = resolve_inside(root, instance_relpath(keys))
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert target.resolve().is_relative_to(root)
    assert [p for p in root.rglob("*") if p.is_file()] == [target]
