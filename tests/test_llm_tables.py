"""benchmarks/llm_tables.py's time-to-perplexity table, on hand-made rounds rows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "llm_tables.py"
_SPEC = importlib.util.spec_from_file_location("llm_tables", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
llm_tables = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(llm_tables)


def _rows(variant: str, seed: int, perplexities: list[float], times: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "variant": variant,
            "seed": seed,
            "round": range(len(perplexities)),
            "test_perplexity": perplexities,
            "sim_time_s": times,
        }
    )


def test_time_to_perplexity_averages_the_seeds_that_reached_it_and_counts_them() -> None:
    rounds = pd.concat(
        [
            _rows("fedspine", 0, [9.0, 6.0, 4.0, 5.0], [0.0, 10.0, 20.0, 30.0]),
            _rows("fedspine", 1, [8.0, 7.0, 6.5, 6.0], [0.0, 12.0, 24.0, 36.0]),
            _rows("fedit", 0, [9.0, 8.0, 7.5], [0.0, 15.0, 30.0]),
        ]
    )
    table = llm_tables.perplexity_table(rounds, [6.0, 4.5]).set_index("variant")
    spine, fedit = table.loc["fedspine"], table.loc["fedit"]
    assert spine["seeds"] == 2 and fedit["seeds"] == 1
    assert spine["ppl_round0"] == 8.5 and spine["ppl_last"] == 5.5 and spine["ppl_best"] == 5.0
    # seed 0 reaches 6.0 at 10 s, seed 1 at 36 s; only seed 0 reaches 4.5 (20 s)
    assert spine["s_to_ppl_6"] == "23.0 (2/2)"
    assert spine["s_to_ppl_4.5"] == "20.0 (1/2)"
    assert fedit["s_to_ppl_6"] == "never" and fedit["ppl_last"] == 7.5


def test_per_class_table_takes_each_runs_last_round_and_the_asked_metric() -> None:
    rounds = pd.DataFrame(
        {
            "variant": ["a", "a", "a", "a"],
            "seed": [0, 0, 1, 1],
            "round": [0, 1, 0, 1],
            "test_loss": [3.0, 1.0, 3.0, 2.0],
            "test_loss_class_pos": [4.0, 2.0, 4.0, 3.0],
            "test_accuracy": [0.1, 0.5, 0.1, 0.7],
        }
    )
    table = llm_tables.per_class_table(rounds, "loss").set_index("variant").loc["a"]
    assert table["seeds"] == 2
    assert table["test_loss_mean"] == 1.5 and table["test_loss_class_pos_mean"] == 2.5
    assert table["test_loss_class_pos_sd"] == pytest.approx(0.7071, abs=1e-4)
    assert "test_accuracy_mean" not in table
