"""A small flood, in CI: bench/flood.py at a twentieth of its size.

8 dcmtk storescu at once -> `isdr serve` -> a stand-in InferenceServer that answers a
random 20% of requests with a 503 or a stall -> two destinations that refuse a random 5%
of C-STOREs. bench/flood.py checks everything it can; this test holds it to that.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.flood import Plan, report, run_flood

pytestmark = [pytest.mark.usefixtures("dcmtk"), pytest.mark.slow]


def test_a_flood_through_a_flaky_server_ends_with_every_series_delivered_once(
    tmp_path: Path,
) -> None:
    plan = Plan(series=12, instances=480, deadline=120)
    result = run_flood(plan, tmp_path, say=lambda _text: None)
    assert result.problems == [], report(result)
    assert result.jobs == {"delivered": 12} and result.submissions == 12
    assert sum(result.faults_injected.values()) > 0 and result.refused_by_destinations > 0
    assert result.log["delivery retried after refusals"] > 0
    warm, end = result.memory["warm"], result.memory["end"]
    assert end["peak_mb"] < 300 and end["peak_mb"] - warm["peak_mb"] < 50, report(result)
