"""``fedspine`` command line: ``run``, ``show-config``, ``sweep`` and ``report``.

Every command parses and validates its input before Ray is imported: a bad config, data file or model is
one ``fedspine: config error: <field>: <problem>; fix: ...`` line and exit code 2, in about a second.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

import yaml

from fedspine_ray.config import ConfigError, load_config
from fedspine_ray.launch.overrides import add_override_argument, parse_overrides

EXIT_CONFIG_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedspine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one federated experiment")
    run.add_argument("config", nargs="?", help="YAML config (default: the shipped default.yaml)")
    run.add_argument("--address", default=None, help="Ray address; 'auto' joins a running cluster")
    run.add_argument("--output-dir", default=None, help="where results go (default: runs/<name>)")
    add_override_argument(run, "override a config field, e.g. --set training.rounds=3 (repeatable)")
    run.add_argument("--quiet", action="store_true", help="no progress bar, log lines only")
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue a killed run from RUN_DIR/checkpoint.pt (written with runtime.checkpoint_every)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of an earlier run in the output directory (refused without it)",
    )
    show = commands.add_parser("show-config", help="print the validated config (defaults filled in)")
    show.add_argument("config", nargs="?")
    add_override_argument(show, "override a config field (repeatable)")
    sweep = commands.add_parser("sweep", help="run a Ray Tune sweep of federated experiments")
    sweep.add_argument("sweep_file", help="sweep YAML (see tune_configs/ and docs/sweeps.md)")
    sweep.add_argument("--address", default=None, help="Ray address; 'auto' joins a running cluster")
    sweep.add_argument("--storage-path", default=None, help="override the sweep's storage_path")
    add_override_argument(
        sweep, "fixed override of the base config for every trial, e.g. --set training.rounds=2 (repeatable)"
    )
    sweep.add_argument(
        "--variants",
        default=None,
        help="comma-separated subset of the sweep's variants to run, e.g. --variants fedit,fedspine",
    )
    sweep.add_argument("--quiet", action="store_true", help="less Tune output")
    sweep.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted sweep (Tuner.restore): finished trials are not run again",
    )
    # Its options belong to the analysis package (analysis/report.py), imported only when the command runs;
    # `fedspine report --help` lists them.
    commands.add_parser(
        "report",
        add_help=False,
        help="compare run directories over seeds: tables, paired tests, plots (fedspine report --help)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        return _report(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    command: Callable[[argparse.Namespace], int] = {
        "run": _run,
        "show-config": _show_config,
        "sweep": _sweep,
    }[args.command]
    try:
        return command(args)
    except ConfigError as exc:  # raised before Ray starts (every command validates first)
        print(f"fedspine: config error: {' '.join(str(exc).split())}", file=sys.stderr)  # always one line
        return EXIT_CONFIG_ERROR


def _show_config(args: argparse.Namespace) -> int:
    config = load_config(args.config, parse_overrides(args.overrides))
    print(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return 0


def _run(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides)
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    if args.resume:
        from fedspine_ray.launch.checkpoint_files import resume_config

        config = resume_config(args.resume, args.config, overrides)
    else:
        config = load_config(args.config, overrides)
        from fedspine_ray.launch.preflight import check_run_dir

        check_run_dir(config.resolved_output_dir(), overwrite=args.overwrite)
    from fedspine_ray.runner import run_experiment  # checks the inputs, then imports Ray

    result = run_experiment(config, address=args.address, quiet=args.quiet, resume=bool(args.resume))
    s = result.summary
    print(
        f"done: {s['method']} {s['rounds']} rounds, accuracy {s['initial_accuracy']:.3f} -> {s['final_accuracy']:.3f}"
        f", simulated {s['sim_time_s']:.1f}s, wall {s['wall_time_s']:.0f}s; results in {s['output_dir']}"
    )
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """``fedspine sweep``: exit 2 on a config error (before Ray starts), 1 if any trial failed."""
    from fedspine_ray.launch.sweep_spec import load_sweep, select_variants, with_storage

    spec = load_sweep(args.sweep_file, parse_overrides(args.overrides))
    if args.storage_path:
        spec = with_storage(spec, args.storage_path)
    if args.variants:
        spec = select_variants(spec, [v.strip() for v in args.variants.split(",") if v.strip()])
    from fedspine_ray.launch.tune import check_resumable, run_sweep, trials_location

    if args.resume:
        check_resumable(spec)
    table = run_sweep(spec, address=args.address, quiet=args.quiet, resume=args.resume)
    shown = ["trial_id", *spec.param_keys, "status", "stopped_early", "test_accuracy", f"best_{spec.metric}"]
    print(table[[c for c in [*shown, "sim_time_s"] if c in table]].to_string(index=False))
    print(f"trials table: {trials_location(spec)}")
    return 1 if (table["status"] != "ok").any() else 0


def _report(argv: list[str]) -> int:
    """``fedspine report RUN_DIR...``: the installed ``analysis`` package's report (``python -m analysis.report``)."""
    from analysis.report import main as report_main

    return report_main(argv, prog="fedspine report")


if __name__ == "__main__":
    sys.exit(main())
