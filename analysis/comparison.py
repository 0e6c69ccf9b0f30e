"""Method comparison over seeds: one row per run, then mean and 95 % interval per variant.

A *variant* is what the comparison names a configuration (``fedit``, ``fedit_pruned``, ``fedspine``...):
the sweep's variant name when the run came from a sweep with ``variants`` (trial.json), otherwise the
method name (see :func:`analysis.tables.load_runs`). Seeds of one variant are its repeats; the same seed
gives every variant the same data partition and devices, so speed-ups and accuracy differences are paired by
seed (:func:`speedup_table`, :func:`paired_table`).

Everything here is plain pandas over the tables of :func:`analysis.tables.load_runs`, so the report,
tests and notebooks share one definition of each number.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd

from analysis.stats import Interval, log_ratio_interval, mean_interval, paired_test

#: Per-client simulated time terms in clients.parquet (download + compute + upload = sim_time_s).
BREAKDOWN_TERMS = ("sim_download_s", "sim_compute_s", "sim_upload_s", "sim_idle_s")
#: Default targets: these fractions of the lowest best accuracy any run reached (so every run reaches all).
DEFAULT_TARGET_FRACTIONS = (0.9, 0.95, 1.0)


def target_column(target: float) -> str:
    """Column of :func:`run_summary` holding the simulated seconds to ``target`` (NaN if never reached)."""
    return f"time_to_{target:.4g}_s"


def run_summary(
    rounds: pd.DataFrame,
    clients: pd.DataFrame,
    targets: Sequence[float],
    time_column: str = "sim_time_s",
    horizon_s: float | None = None,
) -> pd.DataFrame:
    """One row per run: variant, method, seed, time to each target, accuracy, sparsity, time and bytes.

    This is the machine-readable table of a comparison (report: summary.json / summary.parquet).
    ``mean_round_<term>`` are the run's per-round time terms from :func:`round_breakdown`. With
    ``horizon_s``, ``accuracy_at_horizon`` / ``sparsity_at_horizon`` are the run's accuracy and sparsity
    after its last round that ended by then (:func:`common_horizon`); NaN for a run that ended before it.
    """
    per_round = round_breakdown(clients)
    rows = []
    for run, frame in rounds.sort_values(["run", "round"]).groupby("run", sort=True):
        last = frame.iloc[-1]
        row = {
            "run": run,
            "variant": last.get("variant", last.get("method", "")),
            "method": last.get("method", ""),
            "seed": _seed(last.get("seed")),
            "rounds": int(last["round"]),
            "initial_accuracy": float(frame["test_accuracy"].iloc[0]),
            "majority_accuracy": float(last.get("majority_accuracy", math.nan)),
            "final_accuracy": float(last["test_accuracy"]),
            "best_accuracy": float(frame["test_accuracy"].max()),
            "final_sparsity": float(last.get("sparsity", 0.0)),
            "final_total_params": int(last["total_params"]) if "total_params" in frame else -1,
            "sim_time_s": float(last["sim_time_s"]),
            "wall_time_s": float(last["wall_time_s"]),
            "bytes_down": int(frame["bytes_down"].sum()),
            "bytes_up": int(frame["bytes_up"].sum()),
        }
        row["bytes_total"] = row["bytes_down"] + row["bytes_up"]
        for target in targets:
            hit = frame.loc[frame["test_accuracy"] >= target, time_column]
            row[target_column(target)] = float(hit.iloc[0]) if len(hit) else math.nan
        if horizon_s is not None:
            done = frame[frame[time_column] <= horizon_s + 1e-9]
            reached = float(last[time_column]) >= horizon_s - 1e-9
            row["horizon_s"] = float(horizon_s)
            measured = done["test_accuracy"].dropna()  # training.eval_every: the last evaluated round
            row["accuracy_at_horizon"] = float(measured.iloc[-1]) if reached and len(measured) else math.nan
            sparsity = float(done["sparsity"].iloc[-1]) if "sparsity" in done else 0.0
            row["sparsity_at_horizon"] = sparsity if reached else math.nan
        mine = per_round[per_round["run"] == run] if not per_round.empty else per_round
        for term in ("round_s", *BREAKDOWN_TERMS):
            row[f"mean_round_{term}"] = float(mine[term].mean()) if len(mine) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def common_horizon(rounds: pd.DataFrame, time_column: str = "sim_time_s") -> float:
    """The simulated time every run reached: the shortest run's total.

    Methods that prune or adapt finish their rounds in less simulated time, so their final accuracy is
    reached earlier; comparing every run at this horizon gives each the same time budget.
    """
    return float(rounds.groupby("run")[time_column].max().min())


def _seed(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return -1


def default_targets(
    summary: pd.DataFrame, fractions: Sequence[float] = DEFAULT_TARGET_FRACTIONS
) -> list[float]:
    """Targets every run reaches: ``fractions`` of the lowest best accuracy over runs, rounded down to 3 places.

    Targets at or below the highest initial accuracy or majority-class rate are dropped (every run would
    "reach" them at round 0 or by answering one class, which measures nothing); if that leaves none, the
    lowest best accuracy itself is the one target.
    """
    if summary.empty:
        return []
    floor = float(summary["best_accuracy"].min())
    start = float(summary["initial_accuracy"].max())
    if "majority_accuracy" in summary and summary["majority_accuracy"].notna().any():
        start = max(start, float(summary["majority_accuracy"].max()))
    targets = sorted({math.floor(f * floor * 1000 + 1e-6) / 1000 for f in fractions})  # 1e-6: 0.95*0.6
    kept = [t for t in targets if t > start]
    return kept or [math.floor(floor * 1000 + 1e-6) / 1000]


def variant_order(summary: pd.DataFrame, first: Sequence[str] = ()) -> list[str]:
    """Variants in report order: ``first`` (e.g. baseline, focus) where present, then the rest by name."""
    present = list(dict.fromkeys(summary["variant"])) if not summary.empty else []
    head = [v for v in first if v in present]
    return head + sorted(v for v in present if v not in head)


def _interval_row(prefix: str, interval: Interval) -> dict[str, float]:
    return {
        f"{prefix}_mean": interval.mean,
        f"{prefix}_ci_low": interval.low,
        f"{prefix}_ci_high": interval.high,
        f"{prefix}_std": interval.std,
    }


def time_to_target_table(
    summary: pd.DataFrame, targets: Sequence[float], confidence: float = 0.95, order: Sequence[str] = ()
) -> pd.DataFrame:
    """Per variant and target: seeds, seeds that reached it, and mean/CI/std of their simulated seconds.

    The interval is over the seeds that reached the target only; ``reached < seeds`` flags the rest.
    """
    rows = []
    for variant in variant_order(summary, order):
        frame = summary[summary["variant"] == variant]
        for target in targets:
            times = frame[target_column(target)]
            rows.append(
                {
                    "variant": variant,
                    "target": target,
                    "seeds": len(frame),
                    "reached": int(times.notna().sum()),
                    **_interval_row("time_s", mean_interval(times, confidence)),
                }
            )
    return pd.DataFrame(rows)


def _paired_by_seed(
    summary: pd.DataFrame, baseline: str, columns: Sequence[str], order: Sequence[str] | None, caller: str
) -> Iterator[tuple[str, pd.DataFrame, pd.DataFrame, list[Any]]]:
    """Each variant but ``baseline`` with both seed-averaged frames (runs sharing a seed are averaged first)
    and the seeds they share: what every paired table compares."""
    if baseline not in set(summary["variant"]):
        raise ValueError(
            f"{caller}: no run of baseline {baseline!r}; variants: {sorted(set(summary['variant']))}"
        )
    by_seed = summary.groupby(["variant", "seed"])[list(columns)].mean()
    base = by_seed.loc[baseline]
    for variant in variant_order(summary, order):
        if variant != baseline:
            frame = by_seed.loc[variant]
            yield variant, frame, base, sorted(set(frame.index) & set(base.index))


def speedup_table(
    summary: pd.DataFrame,
    baseline: str,
    targets: Sequence[float],
    confidence: float = 0.95,
    order: Sequence[str] = (),
) -> pd.DataFrame:
    """Speed-up over ``baseline`` to each target: geometric mean over seeds of baseline time / variant time.

    Runs are paired by seed (same partition, devices and conditions); pairs where either run missed the
    target, or reached it at round 0, are left out and ``pairs`` says how many remain (runs of a variant
    that share a seed are averaged first). ``verdict`` is
    ``faster`` / ``slower`` when the whole interval is above / below 1, else ``not resolved``.
    """
    times = [target_column(t) for t in targets]
    rows = []
    for variant, frame, base, seeds in _paired_by_seed(summary, baseline, times, order, "speedup_table"):
        for target in targets:
            column = target_column(target)
            interval = log_ratio_interval(
                [base.at[s, column] for s in seeds], [frame.at[s, column] for s in seeds], confidence
            )
            rows.append(
                {
                    "variant": variant,
                    "baseline": baseline,
                    "target": target,
                    "pairs": interval.n,
                    "speedup": interval.mean,
                    "ci_low": interval.low,
                    "ci_high": interval.high,
                    "verdict": _verdict(interval),
                }
            )
    columns = ["variant", "baseline", "target", "pairs", "speedup", "ci_low", "ci_high", "verdict"]
    return pd.DataFrame(rows, columns=columns)


def _verdict(interval: Interval) -> str:
    if interval.n < 2 or math.isnan(interval.low):
        return "not resolved"
    if interval.low > 1.0:
        return "faster"
    if interval.high < 1.0:
        return "slower"
    return "not resolved"


def accuracy_table(
    summary: pd.DataFrame, confidence: float = 0.95, order: Sequence[str] = ()
) -> pd.DataFrame:
    """Per variant: final sparsity next to final and best accuracy, each as mean with its interval."""
    rows = []
    for variant in variant_order(summary, order):
        frame = summary[summary["variant"] == variant]
        row = {"variant": variant, "seeds": len(frame)}
        columns = ["final_sparsity", "final_accuracy", "best_accuracy", "sim_time_s", "bytes_total"]
        columns += [c for c in ("accuracy_at_horizon", "sparsity_at_horizon") if c in frame]
        if "accuracy_at_horizon" in frame:  # runs that ended before the horizon have NaN there
            row["seeds_at_horizon"] = int(frame["accuracy_at_horizon"].notna().sum())
        for column in columns:
            row.update(_interval_row(column, mean_interval(frame[column], confidence)))
        rows.append(row)
    return pd.DataFrame(rows)


#: Per-run columns the paired table compares by default: accuracy after the last round and at equal time.
PAIRED_COLUMNS = ("final_accuracy", "accuracy_at_horizon")


def paired_table(
    summary: pd.DataFrame,
    baseline: str,
    columns: Sequence[str] = PAIRED_COLUMNS,
    confidence: float = 0.95,
    order: Sequence[str] = (),
) -> pd.DataFrame:
    """Each variant against ``baseline``, paired by seed: the mean per-seed difference (variant - baseline) of
    each of ``columns`` with its t interval, and the paired t-test (``scipy.stats.ttest_rel``).

    The same seed is the same data partition, devices and conditions for both, so the differences cancel the
    spread the two share (:mod:`analysis.stats`). Seeds only one of them ran, and runs where either value is
    NaN (ended before the horizon), are left out; ``pairs`` says how many remain. Runs of a variant that share
    a seed are averaged first. ``verdict``: ``higher`` / ``lower`` when the interval excludes 0.
    """
    present = [c for c in columns if c in summary]
    rows = []
    for variant, frame, base, seeds in _paired_by_seed(summary, baseline, present, order, "paired_table"):
        for column in present:
            test = paired_test(
                [frame.at[s, column] for s in seeds], [base.at[s, column] for s in seeds], confidence
            )
            rows.append(
                {
                    "variant": variant,
                    "baseline": baseline,
                    "column": column,
                    "pairs": test.n,
                    "mean_difference": test.difference.mean,
                    "ci_low": test.difference.low,
                    "ci_high": test.difference.high,
                    "t": test.statistic,
                    "p_value": test.p_value,
                    "verdict": test.verdict,
                }
            )
    names = ["variant", "baseline", "column", "pairs", "mean_difference", "ci_low", "ci_high", "t", "p_value"]
    return pd.DataFrame(rows, columns=[*names, "verdict"])


def seed_spread(summary: pd.DataFrame, targets: Sequence[float], order: Sequence[str] = ()) -> pd.DataFrame:
    """How far apart the seeds of each variant are: min, max and std of final accuracy and time to targets."""
    rows = []
    for variant in variant_order(summary, order):
        frame = summary[summary["variant"] == variant]
        row = {
            "variant": variant,
            "seeds": ",".join(str(s) for s in sorted(frame["seed"])),
            "final_accuracy_min": float(frame["final_accuracy"].min()),
            "final_accuracy_max": float(frame["final_accuracy"].max()),
            "final_accuracy_std": float(frame["final_accuracy"].std()) if len(frame) > 1 else math.nan,
        }
        for target in targets:
            times = frame[target_column(target)]
            row[f"time_to_{target:.4g}_min_s"] = float(times.min())
            row[f"time_to_{target:.4g}_max_s"] = float(times.max())
        rows.append(row)
    return pd.DataFrame(rows)


def round_breakdown(clients: pd.DataFrame) -> pd.DataFrame:
    """Per run and round: where the round's simulated time went.

    ``sim_<term>_s`` are means over the clients that finished within the round (``sim_idle_s`` defined):
    for each of them download + compute + upload + idle is the round's duration, so the means add up to
    ``round_s``. ``slowest_<term>_s`` are the terms of the round's slowest such client, the critical path.
    Empty when the runs predate these columns (docs/results.md).
    """
    columns = ["run", "round", "clients", "round_s", *BREAKDOWN_TERMS]
    columns += [f"slowest_{t}" for t in BREAKDOWN_TERMS[:3]]
    if clients.empty or not set(BREAKDOWN_TERMS) <= set(clients.columns):
        return pd.DataFrame(columns=columns)
    finished = clients[clients["sim_idle_s"].notna()].copy()
    finished[list(BREAKDOWN_TERMS[:3])] = finished[list(BREAKDOWN_TERMS[:3])].fillna(0.0)
    rows = []
    for (run, rnd), frame in finished.groupby(["run", "round"], sort=True):
        slowest = frame.loc[frame["sim_time_s"].idxmax()]
        means = frame[list(BREAKDOWN_TERMS)].mean()
        row = {"run": run, "round": int(rnd), "clients": len(frame), "round_s": float(means.sum())}
        row.update({t: float(means[t]) for t in BREAKDOWN_TERMS})
        row.update({f"slowest_{t}": float(slowest[t]) for t in BREAKDOWN_TERMS[:3]})
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def breakdown_by_variant(
    clients: pd.DataFrame, summary: pd.DataFrame, order: Sequence[str] = ()
) -> pd.DataFrame:
    """Per variant: the mean round's terms (over rounds, then seeds) and which term dominates the round."""
    per_round = round_breakdown(clients)
    if per_round.empty:
        return pd.DataFrame(columns=["variant", "round_s", *BREAKDOWN_TERMS, "dominant"])
    variants = summary.set_index("run")["variant"]
    per_run = per_round.groupby("run").mean(numeric_only=True).drop(columns=["round"])
    per_run["variant"] = [variants.get(run, run) for run in per_run.index]
    rows = []
    for variant in variant_order(summary, order):
        frame = per_run[per_run["variant"] == variant]
        if frame.empty:
            continue
        means = frame.mean(numeric_only=True)
        row = {"variant": variant, "runs": len(frame)}
        row.update({c: float(means[c]) for c in means.index if c != "clients"})
        row["dominant"] = max(BREAKDOWN_TERMS, key=lambda t: row[t]).removeprefix("sim_").removesuffix("_s")
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = [
    "BREAKDOWN_TERMS",
    "DEFAULT_TARGET_FRACTIONS",
    "PAIRED_COLUMNS",
    "accuracy_table",
    "breakdown_by_variant",
    "default_targets",
    "paired_table",
    "round_breakdown",
    "run_summary",
    "seed_spread",
    "speedup_table",
    "target_column",
    "time_to_target_table",
    "variant_order",
]
