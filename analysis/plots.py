"""Plots of run tables (matplotlib, headless Agg backend): accuracy over simulated time, bandit arm choices,
the per-round time breakdown per variant.

Each function takes the tables from :func:`analysis.tables.load_runs`, writes one PNG and returns its
path, so a report is a list of files that can go in a directory or a CI artifact.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters / CI; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_accuracy_vs_time(
    rounds: pd.DataFrame, path: str | Path, target: float | None = None, time_column: str = "sim_time_s"
) -> Path:
    """Test accuracy against (simulated) time, one line per run; the x axis is what FedSpine's speedups use."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    evaluated = rounds.dropna(subset=["test_accuracy"])  # rounds training.eval_every skipped have no point
    for run, frame in evaluated.sort_values(["run", "round"]).groupby("run", sort=True):
        method = frame["method"].iloc[0] if "method" in frame else ""
        label = run if not method or method in str(run) else f"{run} ({method})"
        ax.plot(frame[time_column], frame["test_accuracy"], marker="o", markersize=3, label=label)
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.set_xlabel("simulated time (s)" if time_column == "sim_time_s" else time_column)
    ax.set_ylabel("test accuracy")
    ax.set_title("Test accuracy vs time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_accuracy_by_variant(
    rounds: pd.DataFrame, path: str | Path, targets: Sequence[float] = (), time_column: str = "sim_time_s"
) -> Path:
    """Per variant, accuracy over simulated time averaged over seeds by round; the band spans the seeds."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for variant, frame in rounds.dropna(subset=["test_accuracy"]).groupby("variant", sort=True):
        per_round = frame.groupby("round")[[time_column, "test_accuracy"]]
        mean, low, high = per_round.mean(), per_round.min(), per_round.max()
        (line,) = ax.plot(mean[time_column], mean["test_accuracy"], marker="o", markersize=3, label=variant)
        if frame["run"].nunique() > 1:
            ax.fill_between(
                mean[time_column],
                low["test_accuracy"],
                high["test_accuracy"],
                alpha=0.15,
                color=line.get_color(),
            )
    for target in targets:
        ax.axhline(target, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("simulated time (s), mean over seeds" if time_column == "sim_time_s" else time_column)
    ax.set_ylabel("test accuracy (band: min-max over seeds)")
    ax.set_title("Test accuracy vs time per variant" + (" (dashed: targets)" if targets else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_time_breakdown(breakdown: pd.DataFrame, path: str | Path) -> Path:
    """Stacked bars per variant: the mean device's round (download / compute / upload / waiting on the
    slowest) and the slowest device's round (its download / compute / upload), in simulated seconds.

    ``breakdown`` is :func:`analysis.comparison.breakdown_by_variant`.
    """
    terms = (("sim_download_s", "download"), ("sim_compute_s", "compute"), ("sim_upload_s", "upload"))
    fig, (ax_mean, ax_slow) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    labels = list(breakdown["variant"]) if not breakdown.empty else []
    x = range(len(labels))
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:grey")
    for ax, prefix, with_idle in ((ax_mean, "", True), (ax_slow, "slowest_", False)):
        bottom = [0.0] * len(labels)
        for (column, name), color in zip(terms, colors, strict=False):
            values = breakdown[prefix + column].fillna(0.0).tolist() if labels else []
            ax.bar(x, values, bottom=bottom, label=name, color=color)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        if with_idle and labels:
            ax.bar(
                x,
                breakdown["sim_idle_s"].fillna(0.0),
                bottom=bottom,
                label="waiting on slowest",
                color=colors[3],
            )
        ax.set_xticks(list(x), labels, rotation=35, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    if not labels:
        ax_mean.text(0.5, 0.5, "no time breakdown columns", ha="center", transform=ax_mean.transAxes)
    ax_mean.set_ylabel("simulated s per round")
    ax_mean.set_title("mean device (sums to the round time)")
    ax_slow.set_title("slowest device (the critical path)")
    fig.suptitle("Per-round time breakdown, mean over rounds and seeds")
    return _save(fig, path)


def plot_arm_choice(
    clients: pd.DataFrame, path: str | Path, run: str | None = None, title: str | None = None
) -> Path:
    """Per device class, the mean pruning ratio and LoRA rank assigned in each round (what the bandit picks).

    With several runs in ``clients`` pass ``run`` to plot one of them; otherwise all rows are pooled
    (e.g. the seeds of one variant).
    """
    frame = clients if run is None else clients[clients["run"] == run]
    fig, (ax_p, ax_r) = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    if frame.empty:
        ax_p.text(0.5, 0.5, "no client rows", ha="center", transform=ax_p.transAxes)
    per_round = frame.groupby(["device_class", "round"], sort=True)[["pruning_ratio", "lora_rank"]].mean()
    for device_class, series in per_round.groupby(level="device_class"):
        rounds = series.index.get_level_values("round")
        ax_p.plot(rounds, series["pruning_ratio"], marker="o", markersize=3, label=device_class)
        ax_r.plot(rounds, series["lora_rank"], marker="o", markersize=3, label=device_class)
    ax_p.set_ylabel("mean pruning ratio")
    ax_r.set_ylabel("mean LoRA rank")
    for ax in (ax_p, ax_r):
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax_r.legend(fontsize=8, title="device class")
    fig.suptitle("Arm choice per device class" + (f" ({title or run})" if title or run else ""))
    return _save(fig, path)


def save_all(
    rounds: pd.DataFrame, clients: pd.DataFrame, out_dir: str | Path, target: float | None = None
) -> list[Path]:
    """Write every plot for the loaded runs into ``out_dir``; one arm-choice plot per run with client rows."""
    out = Path(out_dir)
    paths = [plot_accuracy_vs_time(rounds, out / "accuracy_vs_sim_time.png", target)]
    if not clients.empty:
        for run in sorted(clients["run"].unique()):
            safe = str(run).replace("/", "_")
            paths.append(plot_arm_choice(clients, out / f"arm_choice_{safe}.png", run=run))
    return paths


def save_comparison(
    rounds: pd.DataFrame,
    clients: pd.DataFrame,
    breakdown: pd.DataFrame,
    out_dir: str | Path,
    targets: Sequence[float] = (),
) -> list[Path]:
    """The seed-aggregated plots: accuracy per variant, time breakdown, and arms per variant.

    Arm plots are drawn for variants whose clients got more than one (pruning ratio, rank) pair; a
    method that gives every device the same arm has nothing to show.
    """
    out = Path(out_dir)
    paths = [
        plot_accuracy_by_variant(rounds, out / "accuracy_by_variant.png", targets),
        plot_time_breakdown(breakdown, out / "time_breakdown.png"),
    ]
    if not clients.empty and "variant" in clients:
        for variant, frame in clients.groupby("variant", sort=True):
            if len(frame[["pruning_ratio", "lora_rank"]].drop_duplicates()) > 1:
                safe = str(variant).replace("/", "_")
                seeds = frame["run"].nunique()
                paths.append(
                    plot_arm_choice(
                        frame, out / f"arms_{safe}.png", title=f"{variant}, {seeds} run(s) pooled"
                    )
                )
    return paths


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
