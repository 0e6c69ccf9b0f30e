"""Which devices each method could include, and what their data contributed: tables for the LLM comparison.

``analysis.report`` compares accuracy and time; on the LLM scenarios (tune_configs/llm_comparison*.yaml) the
question is also *who trained*: dense methods' TX2s and Xavier NXs fail with ``oom`` every round, and with the
device-correlated partition they alone hold a class. From run directories (``sweeps/<name>/runs/*``) this prints
Markdown tables, mean over seeds per variant (``analysis.tables.load_runs`` names variants and seeds):

* devices included: how many distinct devices trained at least once, and per device class the share of its
  (device, round) tasks that trained (``status == ok``) and that ran out of memory (``oom``);
* per-class accuracy of the last round (the whole test split): ``test_accuracy`` and every
  ``test_accuracy_class_<label>`` column (docs/results.md), mean and standard deviation over seeds, and the
  answer loss per class (``test_loss_class_<label>``, where the runs have it): a rare class can gain likelihood
  before it wins an argmax;
* for instruction tuning (rows with ``test_perplexity``): answer perplexity at round 0, at the last round and at
  its best, and the simulated time to each ``--ppl-target`` (time-to-perplexity, the instruction config's speed
  metric, which ``analysis.report``'s accuracy targets do not cover). Rounds between full evaluations score a
  fixed subset (``eval_samples``), so a time to target is read off those estimates.

Usage: python benchmarks/llm_tables.py "sweeps/llm_comparison/runs/*" [--ppl-target P ...] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from analysis.tables import load_runs  # noqa: E402


def devices_included(clients: pd.DataFrame) -> pd.DataFrame:
    """Per variant: distinct devices that trained, and per device class the ok / oom shares of its tasks."""
    rows = []
    for (variant, seed), runs in clients.groupby(["variant", "seed"]):
        row: dict[str, Any] = {"variant": variant, "seed": seed}
        row["devices_trained"] = runs[runs["status"] == "ok"]["client_id"].nunique()
        row["devices"] = runs["client_id"].nunique()
        for device_class, tasks in runs.groupby("device_class"):
            row[f"{device_class}_ok"] = float((tasks["status"] == "ok").mean())
            row[f"{device_class}_oom"] = float((tasks["status"] == "oom").mean())
        rows.append(row)
    per_seed = pd.DataFrame(rows)
    return per_seed.drop(columns="seed").groupby("variant").mean().reset_index()


def per_class_table(rounds: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Last round's ``test_<metric>`` and ``test_<metric>_class_*`` columns per variant: mean and standard
    deviation over seeds."""
    last = rounds.loc[rounds.groupby(["variant", "seed"])["round"].idxmax()]
    prefix = f"test_{metric}_class_"
    columns = [f"test_{metric}", *sorted(c for c in last.columns if c.startswith(prefix))]
    grouped = last.groupby("variant")[columns]
    table = grouped.mean().add_suffix("_mean").join(grouped.std().add_suffix("_sd"))
    table.insert(0, "seeds", last.groupby("variant")["seed"].nunique())
    if "eval_samples" in last:
        table.insert(1, "eval_samples", last.groupby("variant")["eval_samples"].max())
    return table.reset_index()


def perplexity_table(rounds: pd.DataFrame, targets: list[float]) -> pd.DataFrame:
    """Per variant: answer perplexity (start, last, best; mean over seeds) and simulated s to each target.

    A target's cell is the mean time over the seeds that reached it, with how many did (``never`` if none):
    averaging only the seeds that got there would otherwise hide the ones that did not.
    """
    rows = []
    for variant, runs in rounds.groupby("variant"):
        per_seed = [seed_rows.sort_values("round") for _, seed_rows in runs.groupby("seed")]
        row: dict[str, Any] = {"variant": variant, "seeds": len(per_seed)}
        row["ppl_round0"] = float(pd.Series([r["test_perplexity"].iloc[0] for r in per_seed]).mean())
        row["ppl_last"] = float(pd.Series([r["test_perplexity"].iloc[-1] for r in per_seed]).mean())
        row["ppl_best"] = float(pd.Series([r["test_perplexity"].min() for r in per_seed]).mean())
        for target in targets:
            reached = [r.loc[r["test_perplexity"] <= target, "sim_time_s"].min() for r in per_seed]
            times = [t for t in reached if pd.notna(t)]
            cell = f"{sum(times) / len(times):.1f} ({len(times)}/{len(per_seed)})" if times else "never"
            row[f"s_to_ppl_{target:g}"] = cell
        rows.append(row)
    return pd.DataFrame(rows)


def _markdown(frame: pd.DataFrame) -> str:
    cells = [
        [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)
    ]
    lines = ["| " + " | ".join(frame.columns) + " |", "| " + " | ".join("---" for _ in frame.columns) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories or glob patterns")
    parser.add_argument(
        "--ppl-target", type=float, action="append", default=[], help="answer perplexity target"
    )
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    rounds, clients = load_runs(args.runs)
    included, accuracy = devices_included(clients), per_class_table(rounds)
    print("## Devices included (mean over seeds)\n")
    print(_markdown(included))
    print("\n## Last round's accuracy per class (whole test split; mean and sd over seeds)\n")
    print(_markdown(accuracy))
    payload = {"devices_included": included.to_dict("records"), "per_class": accuracy.to_dict("records")}
    if any(c.startswith("test_loss_class_") for c in rounds.columns):
        loss = per_class_table(rounds, "loss")
        print("\n## Last round's answer loss per class (whole test split; mean and sd over seeds)\n")
        print(_markdown(loss))
        payload["per_class_loss"] = loss.to_dict("records")
    if "test_perplexity" in rounds and rounds["test_perplexity"].notna().any():
        perplexity = perplexity_table(rounds, sorted(args.ppl_target, reverse=True))
        print(
            "\n## Answer perplexity (mean over seeds) and simulated s to each target (seeds that reached it)\n"
        )
        print(_markdown(perplexity))
        payload["perplexity"] = perplexity.to_dict("records")
    if args.json_out:
        args.json_out.write_text(json.dumps(payload, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
