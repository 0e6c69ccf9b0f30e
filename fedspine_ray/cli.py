"""``fedspine`` command line: ``fedspine run [CONFIG] [--address auto] [--set key=value ...]``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import yaml

from fedspine_ray.cli_options import add_override_argument, parse_overrides
from fedspine_ray.config import ConfigError, load_config
from fedspine_ray.preflight import check_inputs
from fedspine_ray.sweep import add_sweep_command, run_sweep_command

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
    show = commands.add_parser("show-config", help="print the validated config (defaults filled in)")
    show.add_argument("config", nargs="?")
    add_override_argument(show, "override a config field (repeatable)")
    add_sweep_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.command == "sweep":
        return run_sweep_command(args)
    try:
        overrides = parse_overrides(args.overrides)
        if getattr(args, "output_dir", None):
            overrides["output_dir"] = args.output_dir
        if getattr(args, "resume", None):
            from fedspine_ray.checkpoint_files import resume_config

            config = resume_config(args.resume, args.config, overrides)
        else:
            config = load_config(args.config, overrides)
        if args.command == "run":
            check_inputs(config)  # model/data files and sources: caught here, not in the server actor
    except ConfigError as exc:
        print(f"fedspine: config error: {' '.join(str(exc).split())}", file=sys.stderr)  # always one line
        return EXIT_CONFIG_ERROR
    if args.command == "show-config":
        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return 0
    from fedspine_ray.runner import run_experiment  # imports Ray; only after the config is known good

    result = run_experiment(config, address=args.address, quiet=args.quiet, resume=bool(args.resume))
    s = result.summary
    print(
        f"done: {s['method']} {s['rounds']} rounds, accuracy {s['initial_accuracy']:.3f} -> {s['final_accuracy']:.3f}"
        f", simulated {s['sim_time_s']:.1f}s, wall {s['wall_time_s']:.0f}s; results in {s['output_dir']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
