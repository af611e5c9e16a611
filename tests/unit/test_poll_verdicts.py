"""What a poll's answer means, per API generation: a pure function."""

from __future__ import annotations

import pytest

from isdr.daemons.poll import Verdict, judge


@pytest.mark.parametrize("api", [1, 2])
def test_200_means_the_output_is_ready(api: int) -> None:
    assert judge(api, 200)[0] is Verdict.READY


@pytest.mark.parametrize("api", [1, 2])
def test_551_means_poll_again(api: int) -> None:
    assert judge(api, 551)[0] is Verdict.WAIT


@pytest.mark.parametrize(("api", "status"), [(1, 552), (2, 552), (1, 553), (2, 553)])
def test_552_and_553_fail_the_job_with_the_reason(api: int, status: int) -> None:
    verdict, reason = judge(api, status)
    assert verdict is Verdict.FAILED and str(status) in reason


def test_554_on_api_1_is_normal_right_after_a_submit() -> None:
    assert judge(1, 554)[0] is Verdict.WAIT


def test_500_on_api_2_means_an_unknown_task() -> None:
    assert judge(2, 500)[0] is Verdict.UNKNOWN


def test_500_on_api_1_is_a_server_error_to_wait_out() -> None:
    assert judge(1, 500)[0] is Verdict.TROUBLE


@pytest.mark.parametrize("api", [1, 2])
def test_no_answer_is_trouble_to_wait_out(api: int) -> None:
    assert judge(api, None)[0] is Verdict.TROUBLE
    assert judge(api, 503)[0] is Verdict.TROUBLE


def test_554_on_api_1_after_the_task_was_seen_means_it_is_gone() -> None:
    verdict, reason = judge(1, 554, seen=True)
    assert verdict is Verdict.UNKNOWN and "gone from the server" in reason


@pytest.mark.parametrize(("api", "status"), [(1, 302), (2, 307), (2, 301), (1, 308)])
def test_a_redirected_poll_fails_the_job_at_once_naming_where_it_points(
    api: int, status: int
) -> None:
    verdict, reason = judge(api, status, location="https://elsewhere.example/tasks/")
    assert verdict is Verdict.FAILED
    assert f"redirected ({status})" in reason and "https://elsewhere.example/tasks/" in reason
    assert "inference_server_url" in reason


def test_a_redirect_without_a_location_still_fails_the_job() -> None:
    verdict, reason = judge(1, 302)
    assert verdict is Verdict.FAILED and "to ?" in reason
