"""What an unpacked output is worth: a pure judgement of its files."""

from __future__ import annotations

from isdr.domain.output import OutputRecord
from isdr.inference.outputs import judge_output

DICOM = OutputRecord("a.dcm", 1000, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2.1")
LOG = OutputRecord("container.log", 0)


def test_an_output_with_dicom_is_usable_and_lists_what_is_kept() -> None:
    verdict = judge_output([DICOM, LOG], [], [], 2, dicom_required=True)
    assert verdict.usable
    assert verdict.text == (
        "output unpacked: 1 DICOM file(s) for 2 destination(s); kept in the job folder, "
        "not DICOM: container.log (0 bytes)"
    )


def test_an_empty_container_log_alone_is_no_dicom_output() -> None:
    verdict = judge_output([LOG], [], [], 1, dicom_required=True)
    assert not verdict.usable
    assert (
        verdict.text
        == "the model produced no DICOM output: it returned only container.log (0 bytes)"
    )


def test_generation_1s_marker_file_says_the_model_wrote_nothing() -> None:
    marker = OutputRecord("no_output_files_found.error", 0)
    verdict = judge_output([marker], [], [], 1, dicom_required=True)
    assert not verdict.usable and "no_output_files_found.error" in verdict.text


def test_an_archive_with_no_file_at_all_is_said_so() -> None:
    verdict = judge_output([], [], ["masks/"], 1, dicom_required=True)
    assert not verdict.usable
    assert "held no file" in verdict.text and "masks/ arrived empty" in verdict.text


def test_no_dicom_is_a_success_that_says_so_when_the_fingerprint_allows_it() -> None:
    report = OutputRecord("report.json", 20)
    verdict = judge_output([report], [], [], 1, dicom_required=False)
    assert verdict.usable and "no DICOM file, as the fingerprint allows" in verdict.text


def test_renamed_members_and_empty_folders_are_said() -> None:
    verdict = judge_output([DICOM], [("mask.nii.gz", "mask~2.nii.gz")], ["seg/"], 1,
                           dicom_required=True)  # fmt: skip
    assert "mask.nii.gz -> mask~2.nii.gz" in verdict.text
    assert "the server dropped nested outputs: seg/ arrived empty" in verdict.text
