"""benchmarks/bench_llm_round.py's per-window goal ratios, on hand-made round rows.

With overlapped evaluation the rounds are pipelined, so a round's wall-time window holds the next round's clients;
the ratios must charge each window with the training it held, not with its own round's.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_llm_round.py"
_SPEC = importlib.util.spec_from_file_location("bench_llm_round", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def _row(rnd: int, wall: float, ideal: float, overlapped: bool) -> dict:
    return {"round": rnd, "round_wall_time_s": wall, "ideal_round_s": ideal, "eval_overlapped": overlapped}


def test_overlapped_windows_hold_the_next_rounds_clients():
    rows = bench.with_windows(
        [
            _row(1, 90.0, 30.0, True),
            _row(2, 44.0, 40.0, True),
            _row(3, 41.0, 20.0, True),
            _row(4, 18.0, 25.0, False),
        ]
    )
    # window 1: its own clients (round 0 started nothing early) and round 2's, trained during its evaluation
    assert [r["ideal_in_window_s"] for r in rows] == [70.0, 20.0, 25.0, 0.0]
    assert rows[0]["ratio_window"] == pytest.approx(90 / 70)
    assert rows[1]["ratio_window"] == pytest.approx(44 / 20)
    assert math.isnan(rows[3]["ratio_window"])  # the last window only evaluates
    assert bench.overall_ratio(rows) == pytest.approx((90 + 44 + 41 + 18) / (30 + 40 + 20 + 25))


def test_without_overlap_each_window_holds_its_own_round():
    rows = bench.with_windows([_row(1, 60.0, 30.0, False), _row(2, 50.0, 25.0, False)])
    assert [r["ratio_window"] for r in rows] == [pytest.approx(2.0), pytest.approx(2.0)]
    assert [r["ratio_window"] for r in rows] == [r["round_wall_time_s"] / r["ideal_round_s"] for r in rows]


def test_reanalyse_adds_the_window_columns_to_an_old_report():
    old = {"rounds": [_row(1, 90.0, 30.0, True), _row(2, 20.0, 30.0, False)], "config": "x"}
    report = bench.reanalyse(old)
    assert report["config"] == "x" and report["max_ratio_window"] == pytest.approx(1.5)
    assert report["windows_within_goal"] == 0 and report["overall_ratio"] == pytest.approx(110 / 60)


def test_pin_parses_disjoint_core_sets():
    assert bench.parse_pin("0:1") == {"pool_workers": {0}, "server": {1}}
    assert bench.parse_pin("0,2-3:1") == {"pool_workers": {0, 2, 3}, "server": {1}}
    for bad in ("0", "0:", ":1", "0-1:1"):
        with pytest.raises(ValueError):
            bench.parse_pin(bad)
