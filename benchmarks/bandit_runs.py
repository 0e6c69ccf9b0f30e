"""Compare finished FedSpine runs that differ in their bandit: time to accuracy, and what the bandits chose.

``analysis.report`` groups runs by method, so two FedSpine runs with different ``bandit.algorithm`` would be
pooled; this script keeps each run separate and adds the bandit's view (mean pruning ratio / rank per
device class, distinct sub-models per round, download volume).

    python benchmarks/bandit_runs.py sucb_s0=runs/sucb_s0 ducb_s0=runs/ducb_old_s0 --target 0.55 --target 0.6
"""

from __future__ import annotations

import argparse
import math

import pandas as pd

from fedspine_ray.launch.results import read_run


def time_to(rounds: pd.DataFrame, target: float) -> float:
    """Simulated seconds until test accuracy first reaches ``target`` (NaN if never)."""
    hit = rounds[rounds["test_accuracy"] >= target]
    return float(hit["sim_time_s"].iloc[0]) if len(hit) else math.nan


def summarise(label: str, path: str, targets: list[float], from_round: int) -> tuple[dict, pd.DataFrame]:
    rounds, clients = read_run(path)
    trained = rounds[rounds["round"] >= 1]
    row = {
        "run": label,
        "final_acc": float(rounds["test_accuracy"].iloc[-1]),
        "best_acc": float(rounds["test_accuracy"].max()),
        "sim_time_s": float(rounds["sim_time_s"].iloc[-1]),
        "mean_round_s": float(trained["round_sim_time_s"].mean()),
        "sparsity": float(rounds["sparsity"].iloc[-1]),
        "GB_down": float(trained["bytes_down"].sum()) / 1e9,
        "ratios_per_round": float(clients.groupby("round")["pruning_ratio"].nunique().mean()),
    }
    row.update({f"t@{t:g}": time_to(rounds, t) for t in targets})
    late = clients[clients["round"] >= from_round]
    per_class = late.groupby("device_class")[["pruning_ratio", "lora_rank", "sim_time_s"]].mean()
    per_class.columns = [f"{label}:ratio", f"{label}:rank", f"{label}:client_s"]
    return row, per_class


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="label=run_dir")
    ap.add_argument(
        "--target", type=float, action="append", default=None, help="accuracy target (repeatable)"
    )
    ap.add_argument("--from-round", type=int, default=1, help="per-class means over rounds >= this")
    args = ap.parse_args()
    targets = args.target or [0.55, 0.6]
    rows, classes = [], []
    for spec in args.runs:
        label, _, path = spec.partition("=")
        row, per_class = summarise(label, path or label, targets, args.from_round)
        rows.append(row)
        classes.append(per_class)
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.precision", 3):
        print(pd.DataFrame(rows).set_index("run").to_string())
        print(f"\nper device class, rounds >= {args.from_round}:")
        print(pd.concat(classes, axis=1).to_string())


if __name__ == "__main__":
    main()
