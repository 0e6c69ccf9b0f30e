"""Report over run directories: prints the tables and saves them (Markdown) and the plots.

python -m analysis.report runs/fedit runs/fedspine --target 0.6 --baseline fedit --out reports/cmp
python -m analysis.report "sweeps/fedspine_vs_baselines/runs/*" --target 0.6
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis import tables


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories (or glob patterns) holding rounds.parquet")
    parser.add_argument("--target", type=float, default=0.6, help="test accuracy for time-to-accuracy")
    parser.add_argument(
        "--baseline", default=None, help="method the speedup is measured against (default: fedit if present)"
    )
    parser.add_argument(
        "--out", default=None, help="directory for report.md and PNG plots (default: print only)"
    )
    return parser


def build_sections(
    rounds: pd.DataFrame, clients: pd.DataFrame, target: float, baseline: str | None
) -> dict[str, pd.DataFrame]:
    """The report's tables by title; speedup only when the baseline method is among the runs."""
    sections = {
        "Final metrics": tables.final_metrics(rounds),
        f"Time to accuracy {target:g} (simulated s)": tables.time_to_accuracy(rounds, target),
    }
    methods = set(rounds["method"]) if "method" in rounds else set()
    baseline = baseline or ("fedit" if "fedit" in methods else None)
    if baseline is not None and baseline in methods:
        sections[f"Speedup vs {baseline} at accuracy {target:g}"] = tables.speedup_vs(
            rounds, baseline, target
        )
    if not clients.empty:
        sections["Arm usage per device class"] = tables.arm_usage(clients, by=("run", "device_class"))
    return sections


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rounds, clients = tables.load_runs(args.runs)
    except FileNotFoundError as exc:
        print(f"analysis.report: {exc}", file=sys.stderr)
        return 2
    sections = build_sections(rounds, clients, args.target, args.baseline)
    markdown = []
    for title, frame in sections.items():
        print(f"\n== {title} ==\n{frame.to_string(index=False)}")
        markdown.append(f"## {title}\n\n{tables.to_markdown(frame)}\n")
    if args.out:
        from analysis import plots  # matplotlib only when plots are wanted

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        pngs = plots.save_all(rounds, clients, out, target=args.target)
        images = "\n".join(f"![{p.stem}]({p.name})" for p in pngs)
        (out / "report.md").write_text(
            "# fedspine-ray report\n\n" + "\n".join(markdown) + "\n" + images + "\n"
        )
        print(f"\nreport: {out / 'report.md'} ({len(pngs)} plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
