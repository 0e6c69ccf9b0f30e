"""Report over run directories: seed-aggregated comparison tables, paired tests, plots, a machine-readable summary.

fedspine report "sweeps/paper_comparison/runs/*" --baseline fedit --baseline hetlora \
    --out benchmarks/results/paper_comparison
fedspine report runs/fedit runs/fedspine --target 0.6 --target 0.62 --out reports/cmp

(``python -m analysis.report ...`` is the same command.) Runs are grouped by variant (sweep variant name,
else the method) and repeated over seeds; every number is a mean with its Student-t interval over seeds,
and each variant is compared with each baseline paired by seed (mean difference, paired t-test). With --out,
the directory gets report.md, summary.json and summary.parquet (one row per run: variant x seed) and the PNG
plots, which need matplotlib: ``pip install "fedspine-ray[plots]"`` (or pass --no-plots).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import comparison, tables
from analysis.stats import Interval

SUMMARY_JSON = "summary.json"
SUMMARY_PARQUET = "summary.parquet"
REPORT_FILE = "report.md"
#: Focus of the comparison: the variant whose speed-ups and accuracy the notes single out.
DEFAULT_FOCUS = "fedspine"
#: How plots are installed: matplotlib is an optional extra of fedspine-ray.
PLOTS_EXTRA = 'pip install "fedspine-ray[plots]"'


def build_parser(prog: str = "python -m analysis.report") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories (or glob patterns) holding rounds.parquet")
    parser.add_argument(
        "--target",
        type=float,
        action="append",
        default=None,
        help="test accuracy for time-to-accuracy (repeatable); default: 0.9, 0.95 and 1.0 x the lowest best "
        "accuracy of any run, so every run reaches every target",
    )
    parser.add_argument(
        "--baseline",
        action="append",
        default=None,
        help="variant speed-ups are measured against (repeatable; default: fedit if present)",
    )
    parser.add_argument(
        "--focus",
        action="append",
        default=None,
        help=f"variant the notes compare with the others (repeatable; default: {DEFAULT_FOCUS})",
    )
    parser.add_argument(
        "--confidence", type=float, default=0.95, help="interval level (Student t over seeds)"
    )
    parser.add_argument(
        "--horizon",
        type=float,
        default=None,
        help="simulated seconds of the equal-time accuracy table (default: the shortest run's total); runs "
        "that ended before it count as not reaching it",
    )
    parser.add_argument(
        "--keep-short-runs",
        action="store_true",
        help="keep runs with fewer rounds than the longest (default: leave them out as failed or unfinished)",
    )
    parser.add_argument(
        "--prior-summary",
        default=None,
        help="summary.parquet of an earlier report whose runs' tables are gone: its per-run rows join the "
        "seed statistics (needs the same --target values and --horizon); plots, the time breakdown and arm "
        "usage show only runs given with their tables",
    )
    parser.add_argument("--out", default=None, help="directory for report.md, summary.json/.parquet and PNGs")
    parser.add_argument(
        "--no-plots",
        action="store_true",
        help=f"with --out, write the tables but no PNGs (plots need matplotlib: {PLOTS_EXTRA})",
    )
    return parser


def merge_prior_summary(
    summary: pd.DataFrame, prior: pd.DataFrame, targets: Sequence[float], horizon_s: float
) -> tuple[pd.DataFrame, list[str]]:
    """Per-run rows of an earlier report added to ``summary`` (runs present in both keep the new row).

    Why: a report's statistics need only one row per run, so runs whose round tables were lost still count
    as seeds. Rows must have been computed at the same targets and horizon, or they would mix definitions.
    """
    needed = [comparison.target_column(t) for t in targets]
    missing = [c for c in needed if c not in prior]
    if missing:
        raise ValueError(
            f"--prior-summary has no column {missing[0]!r}: pass the --target values it was built with"
        )
    horizons = prior.get("horizon_s", pd.Series(dtype=float)).dropna().unique()
    if len(horizons) and any(abs(h - horizon_s) > 1e-6 for h in horizons):
        raise ValueError(
            f"--prior-summary was built at horizon {horizons[0]:g} s; pass --horizon {horizons[0]:g}"
        )
    added = prior[~prior["run"].isin(set(summary["run"]))]
    merged = pd.concat(
        [summary, added[[c for c in added.columns if c in summary.columns]]], ignore_index=True
    )
    merged = merged.sort_values(["variant", "seed", "run"], kind="stable").reset_index(drop=True)
    note = (
        f"{len(added)} run(s) come from an earlier report's summary (--prior-summary): they count in every "
        "seed statistic but not in the plots, time breakdown or arm usage, whose round tables are gone."
    )
    return merged, [note] if len(added) else []


@dataclass
class Report:
    """Everything the report shows: targets, per-run summary, titled tables and plain-text findings."""

    targets: list[float]
    baselines: list[str]
    summary: pd.DataFrame
    sections: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    breakdown: pd.DataFrame = field(default_factory=pd.DataFrame)


def drop_short_runs(
    rounds: pd.DataFrame, clients: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Leave out runs that stopped before their last round (a failed or unfinished trial).

    A run is finished once it ran its ``planned_rounds`` (``training.rounds``) or spent its simulated-time
    budget (``sim_time_budget_s``, ``training.max_sim_time_s``): faster methods run more rounds in the same
    time. Without those columns (runs not loaded from directories) the longest run's last round counts.
    Why: a trial killed after round 0 would otherwise enter the comparison with its untrained accuracy,
    drag the default targets down and count as a seed. Returns the kept tables and the left-out run names.
    """
    ends = rounds.sort_values("round").groupby("run").last()
    unknown = pd.Series(math.nan, ends.index)
    planned = ends.get("planned_rounds", unknown).fillna(ends["round"].max())
    budget = ends.get("sim_time_budget_s", unknown)
    finished = (ends["round"] >= planned) | (ends["sim_time_s"] >= budget)
    short = sorted(ends.index[~finished])
    if not short:
        return rounds, clients, []
    keep = ~rounds["run"].isin(short)
    kept_clients = clients[~clients["run"].isin(short)] if "run" in clients else clients
    return rounds[keep], kept_clients, short


def build_report(
    rounds: pd.DataFrame,
    clients: pd.DataFrame,
    targets: Sequence[float] | None = None,
    baselines: Sequence[str] | None = None,
    focus: str | Sequence[str] = DEFAULT_FOCUS,
    confidence: float = 0.95,
    horizon_s: float | None = None,
    prior_summary: pd.DataFrame | None = None,
) -> Report:
    """Compute every table of the report from loaded runs (:func:`analysis.tables.load_runs`).

    ``horizon_s``: the time of the equal-time table; default :func:`analysis.comparison.common_horizon`.
    ``focus``: the variant(s) whose speed and accuracy the notes state against the others.
    """
    focuses = [focus] if isinstance(focus, str) else list(focus)
    probe = comparison.run_summary(rounds, clients, [])
    chosen = sorted(targets) if targets else comparison.default_targets(probe)
    horizon = comparison.common_horizon(rounds) if horizon_s is None else horizon_s
    which = "the shortest run" if horizon_s is None else "--horizon"
    summary = comparison.run_summary(rounds, clients, chosen, horizon_s=horizon)
    prior_notes: list[str] = []
    if prior_summary is not None:
        if not targets or horizon_s is None:
            raise ValueError(
                "--prior-summary needs the --target values and --horizon the earlier report used"
            )
        summary, prior_notes = merge_prior_summary(summary, prior_summary, chosen, horizon)
    variants = set(summary["variant"])
    baselines = list(baselines or (["fedit"] if "fedit" in variants else []))
    missing = [b for b in baselines if b not in variants]
    if missing:
        raise ValueError(f"--baseline {missing[0]!r} is not among the variants {sorted(variants)}")
    order = [*baselines, *focuses]
    level = f"{confidence:.0%}"
    report = Report(chosen, baselines, summary)
    report.notes.extend(prior_notes)
    report.notes.extend(_majority_notes(summary, chosen))
    runs_cols = ["run", "variant", "seed", "rounds", "final_accuracy", "best_accuracy", "final_sparsity"]
    if "majority_accuracy" in summary and summary["majority_accuracy"].notna().any():
        runs_cols.append("majority_accuracy")
    runs_cols += ["sim_time_s", "bytes_total", *(comparison.target_column(t) for t in chosen)]
    report.sections["Runs"] = summary[runs_cols]
    tta = comparison.time_to_target_table(summary, chosen, confidence, order)
    report.sections[f"Time to accuracy (simulated s): mean [{level} CI] (seeds reached/run)"] = _tta_view(tta)
    for baseline in baselines:
        speed = comparison.speedup_table(summary, baseline, chosen, confidence, order)
        report.sections[f"Speed-up vs {baseline}: geometric mean over seeds [{level} CI], paired by seed"] = (
            _speed_view(speed)
        )
        for one in focuses:
            report.notes.extend(_speed_notes(speed, one))
    for baseline in baselines:
        paired = comparison.paired_table(summary, baseline, confidence=confidence, order=order)
        report.sections[
            f"Accuracy vs {baseline}, paired by seed: mean difference (variant - {baseline}) [{level} CI], "
            "paired t-test p"
        ] = _paired_view(paired, horizon)
        for one in focuses:
            report.notes.extend(_paired_notes(paired, one, horizon))
    acc = comparison.accuracy_table(summary, confidence, order)
    report.sections[f"Accuracy at equal sparsity: mean [{level} CI] over seeds"] = _accuracy_view(acc)
    for one in focuses:
        report.notes.extend(_accuracy_notes(acc, one))
    report.sections[
        f"Accuracy at equal simulated time ({horizon:.4g} s, {which}): mean [{level} CI] over seeds"
    ] = _horizon_view(acc)
    for one in focuses:
        report.notes.extend(
            _accuracy_notes(acc, one, column="accuracy_at_horizon", label=f"at {horizon:.4g} s")
        )
    report.breakdown = comparison.breakdown_by_variant(clients, summary, order)
    if not report.breakdown.empty:
        report.sections["Per-round time breakdown (simulated s per round, mean over rounds and seeds)"] = (
            report.breakdown
        )
        report.notes.extend(_breakdown_notes(report.breakdown))
    report.sections["Seed spread"] = comparison.seed_spread(summary, chosen, order)
    report.notes.append(_spread_note(summary))
    report.notes.extend(_host_failure_notes(clients))
    if not clients.empty and "variant" in clients:
        report.sections["Arm usage per device class"] = tables.arm_usage(
            clients, by=("variant", "device_class")
        )
    return report


def _fmt(mean: float, low: float, high: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "n/a"
    if math.isnan(low):
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} [{low:.{digits}g}, {high:.{digits}g}]"


def _by_target(frame: pd.DataFrame, cell: Callable[[Any], str]) -> pd.DataFrame:
    """One row per variant, one ``to <target>`` column per target, each cell ``cell(row)``."""
    rows: dict[str, dict[str, str]] = {}
    for r in frame.itertuples(index=False):
        rows.setdefault(r.variant, {"variant": r.variant})[f"to {r.target:.4g}"] = cell(r)
    return pd.DataFrame(list(rows.values()))


def _tta_view(tta: pd.DataFrame) -> pd.DataFrame:
    return _by_target(
        tta, lambda r: f"{_fmt(r.time_s_mean, r.time_s_ci_low, r.time_s_ci_high)} ({r.reached}/{r.seeds})"
    )


def _speed_view(speed: pd.DataFrame) -> pd.DataFrame:
    return _by_target(
        speed,
        lambda r: (
            f"n/a ({r.pairs} pairs)"
            if math.isnan(r.speedup)
            else f"{_fmt(r.speedup, r.ci_low, r.ci_high)}x {r.verdict} ({r.pairs} pairs)"
        ),
    )


def _interval_view(acc: pd.DataFrame, columns: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """Variant and seeds, then one ``mean [low, high]`` column per ``(column, label)`` of :func:`accuracy_table`."""
    view = pd.DataFrame({"variant": acc["variant"], "seeds": acc["seeds"]})
    for column, label in columns:
        view[label] = [
            _fmt(m, lo, hi)
            for m, lo, hi in zip(
                acc[f"{column}_mean"], acc[f"{column}_ci_low"], acc[f"{column}_ci_high"], strict=True
            )
        ]
    return view


def _accuracy_view(acc: pd.DataFrame) -> pd.DataFrame:
    view = _interval_view(
        acc,
        (
            ("final_sparsity", "final sparsity"),
            ("final_accuracy", "final accuracy"),
            ("best_accuracy", "best accuracy"),
            ("sim_time_s", "total simulated s"),
        ),
    )
    view["MB moved"] = [f"{v / 1e6:.4g}" for v in acc["bytes_total_mean"]]
    return view


def _speed_notes(speed: pd.DataFrame, focus: str) -> list[str]:
    mine = speed[speed["variant"] == focus]
    return [
        f"{focus} vs {r.baseline} to accuracy {r.target:.4g}: "
        + (
            f"{_fmt(r.speedup, r.ci_low, r.ci_high)}x over {r.pairs} seed pairs: {r.verdict}."
            if r.pairs
            else "not measurable (no seed where both reached it after round 0)."
        )
        for r in mine.itertuples(index=False)
    ]


def _paired_label(column: str, horizon: float) -> str:
    return f"accuracy at {horizon:.4g} s" if column == "accuracy_at_horizon" else column.replace("_", " ")


def _paired_cell(r: Any) -> str:
    if not r.pairs:
        return "n/a (no seed both ran)"
    if r.pairs < 2:
        return f"{r.mean_difference:+.3g} (1 pair)"
    return (
        f"{r.mean_difference:+.3g} [{r.ci_low:+.3g}, {r.ci_high:+.3g}] p={r.p_value:.2g} "
        f"{r.verdict} ({r.pairs} pairs)"
    )


def _paired_view(paired: pd.DataFrame, horizon: float) -> pd.DataFrame:
    """One row per variant, one column per compared accuracy, each ``+diff [low, high] p=.. verdict (n pairs)``."""
    rows: dict[str, dict[str, str]] = {}
    for r in paired.itertuples(index=False):
        rows.setdefault(r.variant, {"variant": r.variant})[_paired_label(r.column, horizon)] = _paired_cell(r)
    return pd.DataFrame(list(rows.values()))


def _paired_notes(paired: pd.DataFrame, focus: str, horizon: float) -> list[str]:
    """The focus variant's paired differences from the baseline, where at least two seeds pair up."""
    mine = paired[(paired["variant"] == focus) & (paired["pairs"] >= 2)]
    return [
        f"{_paired_label(r.column, horizon)} {focus} - {r.baseline} paired by seed: {_paired_cell(r)}."
        for r in mine.itertuples(index=False)
    ]


def _horizon_view(acc: pd.DataFrame) -> pd.DataFrame:
    view = _interval_view(acc, (("sparsity_at_horizon", "sparsity"), ("accuracy_at_horizon", "accuracy")))
    return view.assign(seeds=acc["seeds_at_horizon"])  # seeds whose run lasted until the horizon


def _accuracy_notes(
    acc: pd.DataFrame, focus: str, column: str = "final_accuracy", label: str = "final"
) -> list[str]:
    """Where the focus variant's accuracy interval (``column``) lies against each variant's."""
    if focus not in set(acc["variant"]):
        return []
    rows = acc.set_index("variant")

    def interval(variant: str) -> Interval:
        r = rows.loc[variant]
        return Interval(
            r[f"{column}_mean"],
            r[f"{column}_ci_low"],
            r[f"{column}_ci_high"],
            int(r["seeds"]),
            r[f"{column}_std"],
        )

    sparsity_column = "sparsity_at_horizon_mean" if column == "accuracy_at_horizon" else "final_sparsity_mean"
    mine, sparsity = interval(focus), rows.loc[focus, sparsity_column]
    notes = []
    for variant in rows.index:
        other = interval(variant)
        if variant == focus or math.isnan(mine.mean) or math.isnan(other.mean):
            continue  # a variant whose runs all ended before --horizon has nothing to compare there
        other_sparsity = rows.loc[variant, sparsity_column]
        equal = abs(other_sparsity - sparsity) <= 0.02
        if min(mine.n, other.n) < 2:
            relation = "one seed on a side, no interval (not resolved)"
        elif mine.overlaps(other):
            relation = "intervals overlap (not resolved)"
        else:
            relation = "higher, intervals apart" if mine.mean > other.mean else "lower, intervals apart"
        where = (
            "at equal sparsity" if equal else f"not equal sparsity: {sparsity:.3g} vs {other_sparsity:.3g}"
        )
        notes.append(
            f"{label} accuracy {focus} {mine.mean:.3f} vs {variant} {other.mean:.3f} ({where}): {relation}."
        )
    return notes


def _breakdown_notes(breakdown: pd.DataFrame) -> list[str]:
    return [
        f"{r['variant']}: mean round {r['round_s']:.3g} s, dominated by {r['dominant']} "
        f"(download {r['sim_download_s']:.3g}, compute {r['sim_compute_s']:.3g}, upload {r['sim_upload_s']:.3g}, "
        f"waiting {r['sim_idle_s']:.3g} s per device)."
        for r in breakdown.to_dict("records")
    ]


def _spread_note(summary: pd.DataFrame) -> str:
    spread = summary.groupby("variant")["final_accuracy"].agg(lambda s: s.max() - s.min())
    seeds = summary.groupby("variant")["seed"].nunique()
    widest = spread.idxmax()
    return (
        f"Seeds per variant: {seeds.min()}-{seeds.max()}. Final accuracy differs between seeds of one variant "
        f"by up to {spread.max():.3f} ({widest}); the median spread is {spread.median():.3f}."
    )


#: Client statuses caused by the host running the simulation, not by the simulated devices (oom, straggler).
HOST_FAILURES = ("actor_died", "rejected")


def _host_failure_notes(clients: pd.DataFrame) -> list[str]:
    """Warn where client actors died or sent invalid updates: those rounds had fewer devices than planned,
    which shortens them (less to wait for) and changes what was aggregated."""
    if clients.empty or "status" not in clients:
        return []
    failed = clients[clients["status"].isin(HOST_FAILURES)]
    return [
        f"WARNING {variant}: {len(frame)} client-round(s) ended as {'/'.join(sorted(set(frame['status'])))} in "
        f"run(s) {', '.join(sorted(set(frame['run'])))}; those rounds had fewer devices than planned (host-side "
        "failure, not simulated): rerun before comparing."
        for variant, frame in failed.groupby("variant", sort=True)
    ]


def plots_available() -> bool:
    """Whether matplotlib (the ``plots`` extra) is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def write_outputs(
    report: Report, rounds: pd.DataFrame, clients: pd.DataFrame, out: Path, plots: bool = True
) -> list[Path]:
    """report.md, summary.json, summary.parquet and (``plots``) the PNG plots, all in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    pngs: list[Path] = []
    if plots:
        from analysis import plots as drawing  # matplotlib only when plots are wanted

        pngs = drawing.save_comparison(rounds, clients, report.breakdown, out, report.targets)
        pngs.append(drawing.plot_accuracy_vs_time(rounds, out / "accuracy_vs_sim_time.png"))
    report.summary.to_parquet(out / SUMMARY_PARQUET, index=False)
    # The runs' own rows, so the report can be rebuilt or extended (tables.load_runs reads this directory).
    rounds.to_parquet(out / tables.ARCHIVED_ROUNDS_FILE, index=False)
    if not clients.empty:
        clients.to_parquet(out / tables.ARCHIVED_CLIENTS_FILE, index=False)
    payload = {
        "targets": report.targets,
        "baselines": report.baselines,
        "time_column": "sim_time_s",
        "columns": {comparison.target_column(t): t for t in report.targets},
        "rows": json.loads(report.summary.to_json(orient="records")),
    }
    (out / SUMMARY_JSON).write_text(json.dumps(payload, indent=2) + "\n")
    (out / REPORT_FILE).write_text(render_markdown(report, [p.name for p in pngs]))
    return pngs


def render_markdown(report: Report, images: Sequence[str]) -> str:
    lines = ["# fedspine-ray comparison report", ""]
    lines.append(
        f"Targets (test accuracy): {', '.join(f'{t:.4g}' for t in report.targets)}. Times are simulated "
        f"seconds. Machine-readable: `{SUMMARY_JSON}` / `{SUMMARY_PARQUET}` (one row per run)."
    )
    if report.notes:
        lines += ["", "## Findings", "", *(f"- {note}" for note in report.notes)]
    for title, frame in report.sections.items():
        lines += ["", f"## {title}", "", tables.to_markdown(frame)]
    if images:
        lines += ["", "## Plots", "", *(f"![{Path(name).stem}]({name})" for name in images)]
    return "\n".join(lines) + "\n"


def _majority_notes(summary: pd.DataFrame, targets: Sequence[float]) -> list[str]:
    """The test set's majority-class rate, and a warning for targets a one-class answer already meets."""
    rates = summary.get("majority_accuracy", pd.Series(dtype=float)).dropna()
    if rates.empty:
        return []
    high = float(rates.max())
    span = f"{rates.min():.3g}" if rates.min() == high else f"{rates.min():.3g}-{high:.3g}"
    notes = [f"Answering the majority class scores {span} on the test sets (per seed)."]
    low = [t for t in targets if t <= high]
    if low:
        listed = ", ".join(f"{t:.4g}" for t in low)
        notes.append(f"Target(s) {listed} are at or below that rate: reaching them measures nothing.")
    return notes


def main(argv: Sequence[str] | None = None, prog: str = "python -m analysis.report") -> int:
    """Print the report; with ``--out`` also write its files. Exit 2 (one line on stderr) on bad input."""
    args = build_parser(prog).parse_args(argv)
    name = prog.removeprefix("python -m ")
    if args.out and not args.no_plots and not plots_available():
        print(
            f"{name}: --out draws plots with matplotlib, which is not installed; fix: {PLOTS_EXTRA} "
            "(or pass --no-plots)",
            file=sys.stderr,
        )
        return 2
    try:
        rounds, clients = tables.load_runs(args.runs)
    except (FileNotFoundError, ValueError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    short: list[str] = []
    if not args.keep_short_runs:
        rounds, clients, short = drop_short_runs(rounds, clients)
    try:
        prior = pd.read_parquet(args.prior_summary) if args.prior_summary else None
        report = build_report(
            rounds,
            clients,
            args.target,
            args.baseline,
            args.focus or DEFAULT_FOCUS,
            args.confidence,
            args.horizon,
            prior,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    if short:
        report.notes.insert(
            0, f"Left out {len(short)} run(s) that stopped before the last round: {', '.join(short)}."
        )
    print("targets: " + ", ".join(f"{t:.4g}" for t in report.targets))
    for note in report.notes:
        print(f"- {note}")
    for title, frame in report.sections.items():
        print(f"\n== {title} ==\n{frame.to_string(index=False)}")
    if args.out:
        out = Path(args.out)
        pngs = write_outputs(report, rounds, clients, out, plots=not args.no_plots)
        print(f"\nreport: {out / REPORT_FILE} ({len(pngs)} plots, {SUMMARY_JSON}, {SUMMARY_PARQUET})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
