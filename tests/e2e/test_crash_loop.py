"""The crash loop, short: `isdr serve` killed (SIGKILL) in five phases of the pipeline, five
rounds, and started again each time; nothing lost, nothing doubled, no job stuck.

The long run (100 kills) is `python -m bench.crash_loop` (see bench/README.md).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bench.crash_loop import LoopOptions, run_loop

pytestmark = [pytest.mark.usefixtures("dcmtk"), pytest.mark.slow]


def test_five_kills_lose_no_instance_double_no_submit_and_leave_no_job_stuck(
    tmp_path: Path,
) -> None:
    seed = random.SystemRandom().randrange(1 << 31)  # printed: rerun it with --seed
    report = run_loop(LoopOptions(rounds=5, seed=seed, work=tmp_path, settle_timeout=40))
    print(report.text())
    assert report.verdict.passed, report.text()
    assert {kill.round for kill in report.kills} == {1, 2, 3, 4, 5}
    aimed = {kill.aimed for kill in report.kills} - {"anywhere"}  # a start-up round kills twice
    assert len(aimed) == 5  # five different phases
