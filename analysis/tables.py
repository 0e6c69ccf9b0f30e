"""Tables over one or more run directories: final metrics, time-to-accuracy, speedups and bandit arm usage.

Inputs are the Parquet files every run writes (schema: docs/results.md). Every function takes the
concatenated tables returned by :func:`load_runs`, whose ``run`` column tells runs apart, so comparing
methods is a ``groupby`` away.
"""

from __future__ import annotations

import glob
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import yaml

ROUNDS_FILE = "rounds.parquet"
CLIENTS_FILE = "clients.parquet"
CONFIG_FILE = "config.yaml"
#: A report directory's copy of the runs it was built from (analysis/report.py writes them), one table for
#: all runs with their ``run``, ``variant`` and ``seed`` columns: a report can be rebuilt or extended with new
#: runs after the sweep directory is gone.
ARCHIVED_ROUNDS_FILE = "runs_rounds.parquet"
ARCHIVED_CLIENTS_FILE = "runs_clients.parquet"
#: Written by a sweep trial (fedspine_ray/launch/tune.py TRIAL_FILE): its variant name and parameters.
TRIAL_FILE = "trial.json"


def load_runs(paths: str | Path | Iterable[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load ``(rounds, clients)`` of every run directory, adding ``run``, ``variant`` and ``seed`` columns.

    ``run`` is the directory name. ``variant`` (what comparisons group seeds by) is the sweep variant of
    trial.json; without one it is the method name, with ``_pruned`` appended when config.yaml sets
    ``method.prune_global: true`` (so dense and pruned FedIT are not pooled). ``seed`` comes from config.yaml
    (-1 when absent), and so do ``planned_rounds`` (``training.rounds``) and ``sim_time_budget_s``
    (``training.max_sim_time_s``), NaN when unknown or unset: what tells a finished run from a stopped one.
    ``paths`` is a directory, a glob pattern (``"runs/*"``) or a list of either.
    Directories without a rounds.parquet are skipped, so ``sweeps/x/runs/*`` works while trials start.
    A report directory holding ``runs_rounds.parquet``, named explicitly, contributes the runs archived there.
    """
    dirs, archives = _run_dirs(paths), _archive_dirs(paths)
    if not dirs and not archives:
        raise FileNotFoundError(
            f"no run directories with {ROUNDS_FILE} (or {ARCHIVED_ROUNDS_FILE}) in {paths!r}"
        )
    names = _run_names(dirs)
    rounds, clients = [], []
    for archive in archives:
        archived = pd.read_parquet(archive / ARCHIVED_ROUNDS_FILE)
        clash = set(archived["run"]) & set(names)
        if clash:
            raise ValueError(
                f"runs {sorted(clash)} are both in {archive} and given as run directories; "
                "fix: name each run once (drop the directories already archived there)"
            )
        rounds.append(archived)
        if (archive / ARCHIVED_CLIENTS_FILE).is_file():
            clients.append(pd.read_parquet(archive / ARCHIVED_CLIENTS_FILE))
    for directory, name in zip(dirs, names, strict=True):
        frame = pd.read_parquet(directory / ROUNDS_FILE)
        method = str(frame["method"].iloc[0]) if "method" in frame and len(frame) else ""
        config = _run_config(directory)
        variant, seed = run_labels(directory, method, config)
        planned, budget = _run_limits(config)
        rounds.append(
            frame.assign(
                run=name, variant=variant, seed=seed, planned_rounds=planned, sim_time_budget_s=budget
            )
        )
        if (directory / CLIENTS_FILE).is_file():
            clients.append(
                pd.read_parquet(directory / CLIENTS_FILE).assign(run=name, variant=variant, seed=seed)
            )
    rounds_df = pd.concat(rounds, ignore_index=True)
    clients_df = pd.concat(clients, ignore_index=True) if clients else pd.DataFrame(columns=["run"])
    return _run_first(rounds_df), _run_first(clients_df)


def _run_config(directory: Path) -> dict:
    """The run's config.yaml as a dict (empty when absent)."""
    if not (directory / CONFIG_FILE).is_file():
        return {}
    return yaml.safe_load((directory / CONFIG_FILE).read_text()) or {}


def run_labels(directory: Path, method: str, config: dict | None = None) -> tuple[str, int]:
    """``(variant, seed)`` of one run directory, from its trial.json and config.yaml (see :func:`load_runs`).

    ``config``: the directory's config.yaml already read (:func:`load_runs` reads it once per run).
    """
    config = _run_config(directory) if config is None else config
    seed = config.get("seed", -1)
    variant = None
    if (directory / TRIAL_FILE).is_file():
        variant = json.loads((directory / TRIAL_FILE).read_text()).get("variant")
    if not variant:
        variant = method or str((config.get("method") or {}).get("name", ""))
        if (config.get("method") or {}).get("prune_global") is True and not variant.endswith("_pruned"):
            variant = f"{variant}_pruned"
    return str(variant), int(seed) if isinstance(seed, int) else -1


def _run_limits(config: dict) -> tuple[float, float]:
    """``(training.rounds, training.max_sim_time_s)`` of a run's config.yaml dict, NaN when unknown."""
    training = config.get("training") or {}
    limits = (training.get("rounds"), training.get("max_sim_time_s"))
    return tuple(float(v) if isinstance(v, (int, float)) else math.nan for v in limits)  # type: ignore[return-value]


def _path_items(paths: str | Path | Iterable[str | Path]) -> list[str | Path]:
    return [paths] if isinstance(paths, (str, Path)) else list(paths)


def _run_dirs(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    items = _path_items(paths)
    found: list[Path] = []
    for item in items:
        matches = sorted(glob.glob(str(item))) if glob.has_magic(str(item)) else [str(item)]
        found.extend(Path(m) for m in matches if (Path(m) / ROUNDS_FILE).is_file())
    return list(dict.fromkeys(p.resolve() for p in found))


def _archive_dirs(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Report directories named explicitly: a glob such as ``runs/*`` must not also pick up a report written
    beside the runs, whose archive holds those same runs again."""
    found = [
        Path(i)
        for i in _path_items(paths)
        if not glob.has_magic(str(i)) and (Path(i) / ARCHIVED_ROUNDS_FILE).is_file()
    ]
    return list(dict.fromkeys(p.resolve() for p in found))


def _run_names(dirs: Sequence[Path]) -> list[str]:
    """Directory names, or ``parent/name`` where two runs share a name (e.g. two sweeps' trial dirs)."""
    names = [d.name for d in dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{d.parent.name}/{d.name}" for d in dirs]


def _run_first(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[["run", *[c for c in frame.columns if c != "run"]]]


def _method_of(rounds: pd.DataFrame) -> pd.Series:
    if "method" in rounds:
        return rounds.groupby("run", sort=False)["method"].first()
    return pd.Series({run: "" for run in rounds["run"].unique()}, name="method")


def final_metrics(rounds: pd.DataFrame) -> pd.DataFrame:
    """One row per run: last round's accuracy/loss/time, best accuracy and total bytes moved."""
    rows = []
    for run, frame in rounds.sort_values(["run", "round"]).groupby("run", sort=False):
        last = frame.iloc[-1]
        rows.append(
            {
                "run": run,
                "method": last.get("method", ""),
                "rounds": int(last["round"]),
                "initial_accuracy": float(frame["test_accuracy"].iloc[0]),
                "final_accuracy": float(last["test_accuracy"]),
                "best_accuracy": float(frame["test_accuracy"].max()),
                "final_test_loss": float(last["test_loss"]),
                "sim_time_s": float(last["sim_time_s"]),
                "wall_time_s": float(last["wall_time_s"]),
                "bytes_up": int(frame["bytes_up"].sum()),
                "bytes_down": int(frame["bytes_down"].sum()),
                "final_sparsity": float(last.get("sparsity", 0.0)),
            }
        )
    return pd.DataFrame(rows)


def time_to_accuracy(rounds: pd.DataFrame, target: float) -> pd.DataFrame:
    """Simulated seconds until each run's test accuracy first reaches ``target`` (NaN if it never does).

    Round 0 is the evaluation before training, so a run already at the target reports 0 s.
    """
    methods = _method_of(rounds)
    rows = []
    for run, frame in rounds.sort_values(["run", "round"]).groupby("run", sort=False):
        hit = frame[frame["test_accuracy"] >= target]
        first = hit.iloc[0] if len(hit) else None
        rows.append(
            {
                "run": run,
                "method": methods.get(run, ""),
                "target": target,
                "round": math.nan if first is None else int(first["round"]),
                "sim_time_s": math.nan if first is None else float(first["sim_time_s"]),
                "wall_time_s": math.nan if first is None else float(first["wall_time_s"]),
            }
        )
    return pd.DataFrame(rows)


def speedup_vs(rounds: pd.DataFrame, baseline_method: str, target: float) -> pd.DataFrame:
    """Time-to-accuracy speedup of every run over ``baseline_method`` (the paper's headline metric).

    ``speedup = baseline time / run time`` in simulated seconds; the baseline time is the mean over the
    baseline's runs that reached the target. NaN when either side never reaches it.
    """
    tta = time_to_accuracy(rounds, target)
    baseline = tta.loc[tta["method"] == baseline_method, "sim_time_s"]
    if baseline.empty:
        raise ValueError(
            f"speedup_vs: no run of baseline method {baseline_method!r}; methods: {sorted(tta['method'].unique())}"
        )
    base_time = float(baseline.mean()) if baseline.notna().any() else math.nan
    out = tta[["run", "method", "target", "sim_time_s"]].copy()
    out["baseline_method"] = baseline_method
    out["baseline_sim_time_s"] = base_time
    out["speedup"] = [_ratio(base_time, t) for t in out["sim_time_s"]]
    return out


def _ratio(numerator: float, denominator: float) -> float:
    if math.isnan(numerator) or math.isnan(denominator):
        return math.nan
    if denominator == 0:
        return math.inf if numerator > 0 else 1.0
    return numerator / denominator


def arm_usage(clients: pd.DataFrame, by: Sequence[str] = ("device_class",)) -> pd.DataFrame:
    """Per device class (or any ``by`` columns): mean pruning ratio, LoRA rank and local steps (runs that
    record them), and client counts per status.

    Shows what the bandit learned: weak classes should end up with higher pruning ratios / lower ranks.
    Status counts (``status_ok``, ``status_oom``, ``status_straggler``, ...) show what it cost to learn it.
    """
    by = list(by)
    if clients.empty:
        return pd.DataFrame(columns=[*by, "assignments", "mean_pruning_ratio", "mean_lora_rank"])
    grouped = clients.groupby(by, sort=True)
    steps = {"mean_local_steps": ("local_steps", "mean")} if "local_steps" in clients else {}  # newer runs
    table = grouped.agg(
        assignments=("client_id", "size"),
        mean_pruning_ratio=("pruning_ratio", "mean"),
        mean_lora_rank=("lora_rank", "mean"),
        **steps,
    )
    statuses = clients.pivot_table(
        index=by, columns="status", values="client_id", aggfunc="size", fill_value=0
    )
    statuses.columns = [f"status_{c}" for c in statuses.columns]
    return table.join(statuses).reset_index()


def to_markdown(frame: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub-markdown table without the optional ``tabulate`` dependency of ``DataFrame.to_markdown``."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else format(value, floatfmt)
        return str(value)

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
