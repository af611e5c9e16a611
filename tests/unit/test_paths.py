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
