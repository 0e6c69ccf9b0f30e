"""Plots of run tables (matplotlib, headless Agg backend): accuracy over simulated time, bandit arm choices.

Each function takes the tables from :func:`analysis.tables.load_runs`, writes one PNG and returns its
path, so a report is a list of files that can go in a directory or a CI artifact.
"""

from __future__ import annotations

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
    for run, frame in rounds.sort_values(["run", "round"]).groupby("run", sort=True):
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


def plot_arm_choice(clients: pd.DataFrame, path: str | Path, run: str | None = None) -> Path:
    """Per device class, the mean pruning ratio and LoRA rank assigned in each round (what the bandit picks).

    With several runs in ``clients`` pass ``run`` to plot one of them; otherwise all rows are pooled.
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
    fig.suptitle("Arm choice per device class" + (f" ({run})" if run else ""))
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


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
