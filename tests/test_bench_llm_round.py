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


def test_round_zero_that_started_round_one_gets_the_tail_of_its_window():
    """Round 1 dispatched before round 0's evaluation: its clients train in round 0's window, whose part from
    round 1's configure on is a row of its own; the set-up before it is not charged to any round."""
    import pandas as pd

    rounds = pd.DataFrame(
        [
            {
                "round": 0,
                "round_wall_time_s": 0.0,
                "next_round_start_s": 9.0,
                "eval_s": 16.0,
                "eval_overlapped": True,
                "eval_samples": 160.0,
            },
            {
                "round": 1,
                "round_wall_time_s": 40.0,
                "next_round_start_s": 1.0,
                "eval_s": 8.0,
                "eval_overlapped": True,
                "client_train_cpu_s_sum": 60.0,
                "client_train_s_sum": 70.0,
                "eval_samples": 48.0,
            },
            {
                "round": 2,
                "round_wall_time_s": 50.0,
                "next_round_start_s": 0.0,
                "eval_s": 20.0,
                "eval_overlapped": False,
                "client_train_cpu_s_sum": 50.0,
                "client_train_s_sum": 55.0,
                "eval_samples": 160.0,
            },
        ]
    )
    clients = pd.DataFrame(
        [
            {"round": r, "device_class": c, "wall_time_s": w, "status": "ok"}
            for r, c, w in ((1, "a", 30.0), (1, "b", 20.0), (2, "a", 25.0), (2, "b", 22.0))
        ]
    )
    rows = bench.round_breakdown(rounds, clients, {}, cores=2)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[0]["round_wall_time_s"] == 25.0 and rows[0]["ideal_round_s"] == 0.0
    # window 0 holds round 1's clients, window 1 round 2's, the last only the final evaluation
    assert [r["ideal_in_window_s"] for r in rows] == [30.0, 25.0, 0.0]
    assert rows[1]["ratio_window"] == pytest.approx(40 / 25)
    assert bench.overall_ratio(rows) == pytest.approx((25 + 40 + 50) / (30 + 25))
    # a run whose round 0 started nothing (or an old file without the column) has no round-0 row
    rounds.loc[0, "eval_overlapped"] = False
    assert [r["round"] for r in bench.round_breakdown(rounds, clients, {}, cores=2)] == [1, 2]
