"""Several federated methods on the same config, device mix and seed, compared in one process.

Each method in --methods (default fedspine, fedit) runs one after another through
``fedspine_ray.runner.run_experiment`` on ONE embedded Ray, with the same config except ``method.name``
and ``output_dir`` (``<out-dir>/<method>``, which holds that run's Parquet files). Reported per method:

* initial, final and best test accuracy;
* time to target: simulated seconds (and round, and wall seconds) until the global model's test accuracy
  first reaches --target (round 0, the untrained model, counts);
* total simulated time, mean simulated time per round (rounds >= 1), wall time of the run;
* total bytes down (server -> clients) and up (clients -> server);
* speedups over --baseline (default fedit), both measured in this same invocation:
  ``speedup_time_to_target`` = baseline time-to-target / method time-to-target (the FedSpine paper's
  headline metric) and ``speedup_round_time`` = baseline mean round time / method mean round time.

--target auto (the default) is 0.95 x the lowest best accuracy among the methods, so every method reaches it.

Usage: python benchmarks/bench_methods.py [--config YAML] [--methods fedspine,fedit] [--baseline fedit]
       [--target auto|0.6] [--set KEY=VALUE ...] [--out-dir DIR] [--json-out FILE] [--quiet]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `analysis` is a top-level folder of the repository, not installed
    sys.path.insert(0, str(REPO_ROOT))

from analysis.tables import final_metrics, speedup_vs, time_to_accuracy, to_markdown  # noqa: E402
from fedspine_ray.config import ConfigError, ExperimentConfig, load_config, shipped_config_path  # noqa: E402
from fedspine_ray.launch.overrides import add_override_argument, parse_overrides  # noqa: E402
from fedspine_ray.launch.results import atomic_write_text, library_versions  # noqa: E402

EXIT_CONFIG_ERROR = 2
AUTO_TARGET_FRACTION = 0.95
JSON_NAME = "bench_methods.json"

log = logging.getLogger("bench_methods")


def parse_target(text: str) -> float | None:
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"target accuracy must be in (0, 1], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="YAML config (default: the shipped fedspine.yaml)")
    ap.add_argument(
        "--methods",
        default="fedspine,fedit",
        help="comma-separated method.name values (default fedspine,fedit)",
    )
    ap.add_argument("--baseline", default="fedit", help="method the speedups are relative to (default fedit)")
    ap.add_argument(
        "--target",
        type=parse_target,
        default=None,
        metavar="auto|ACC",
        help=f"target test accuracy; 'auto' (default) = {AUTO_TARGET_FRACTION} x the lowest best accuracy",
    )
    add_override_argument(
        ap, "override a config field for every method, e.g. --set training.rounds=3 (repeatable)"
    )
    ap.add_argument("--out-dir", default=None, help="default: benchmarks/results/<timestamp>")
    ap.add_argument(
        "--json-out", default=None, help=f"also write the JSON here (always in <out-dir>/{JSON_NAME})"
    )
    ap.add_argument(
        "--address", default=None, help="Ray address ('auto' joins a cluster; default: local Ray)"
    )
    ap.add_argument("--quiet", action="store_true", help="no per-round log lines")
    return ap


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _num(value: Any) -> Any:
    """numpy / pandas scalars -> plain Python numbers."""
    if hasattr(value, "item"):
        value = value.item()
    return value


def _ratio(numerator: float, denominator: float) -> float:
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator


def method_metrics(rounds: pd.DataFrame, target: float, wall_times: dict[str, float]) -> dict[str, dict]:
    """Per-method metrics from the concatenated ``rounds`` tables (``run`` column = method name)."""
    finals = final_metrics(rounds).set_index("run")
    tta = time_to_accuracy(rounds, target).set_index("run")
    out: dict[str, dict] = {}
    for run, frame in rounds.groupby("run", sort=False):
        trained = frame[frame["round"] >= 1]
        final, hit = finals.loc[run], tta.loc[run]
        out[str(run)] = {
            "rounds": int(final["rounds"]),
            "initial_accuracy": float(final["initial_accuracy"]),
            "final_accuracy": float(final["final_accuracy"]),
            "best_accuracy": float(final["best_accuracy"]),
            "target_round": None if math.isnan(hit["round"]) else int(hit["round"]),
            "time_to_target_s": float(hit["sim_time_s"]),
            "wall_time_to_target_s": float(hit["wall_time_s"]),
            "total_sim_time_s": float(final["sim_time_s"]),
            "mean_round_sim_time_s": float(trained["round_sim_time_s"].mean()) if len(trained) else math.nan,
            "bytes_down": int(final["bytes_down"]),
            "bytes_up": int(final["bytes_up"]),
            "final_sparsity": float(final["final_sparsity"]),
            "final_total_params": int(frame["total_params"].iloc[-1]),
            "wall_time_s": float(wall_times.get(str(run), math.nan)),
        }
    return out


def method_speedups(
    rounds: pd.DataFrame, metrics: dict[str, dict], baseline: str, target: float
) -> dict[str, dict]:
    """Speedups of every method over ``baseline``, from runs of this invocation."""
    tta = speedup_vs(rounds, baseline, target).set_index("run")
    base = metrics[baseline]
    out = {}
    for method, row in metrics.items():
        out[method] = {
            "speedup_time_to_target": float(tta.loc[method, "speedup"]),
            "speedup_round_time": _ratio(base["mean_round_sim_time_s"], row["mean_round_sim_time_s"]),
            "speedup_total_sim_time": _ratio(base["total_sim_time_s"], row["total_sim_time_s"]),
            "bytes_total_vs_baseline": _ratio(
                row["bytes_down"] + row["bytes_up"], base["bytes_down"] + base["bytes_up"]
            ),
        }
    return out


def print_table(metrics: dict[str, dict], speedups: dict[str, dict], target: float, baseline: str) -> None:
    rows = []
    for method, m in metrics.items():
        s = speedups.get(method, {})
        rows.append(
            {
                "method": method,
                "final_acc": m["final_accuracy"],
                "best_acc": m["best_accuracy"],
                "tta_round": "" if m["target_round"] is None else m["target_round"],
                "tta_sim_s": m["time_to_target_s"],
                "total_sim_s": m["total_sim_time_s"],
                "round_sim_s": m["mean_round_sim_time_s"],
                "MB_down": m["bytes_down"] / 1e6,
                "MB_up": m["bytes_up"] / 1e6,
                "wall_s": m["wall_time_s"],
                f"speedup_tta_vs_{baseline}": s.get("speedup_time_to_target", math.nan),
                "speedup_round": s.get("speedup_round_time", math.nan),
            }
        )
    print(f"target accuracy {target:.4f}; time-to-target in simulated seconds (blank = never reached)")
    print(to_markdown(pd.DataFrame(rows), floatfmt=".4g"))


def run_methods(
    base: ExperimentConfig, methods: list[str], out_dir: Path, address: str | None, quiet: bool
) -> tuple[pd.DataFrame, dict[str, float], dict[str, str]]:
    """Run every method on one Ray; returns (rounds of all runs with a ``run`` column, wall times, errors)."""
    import ray

    from fedspine_ray.launch.ray_session import ensure_ray, local_custom_resources
    from fedspine_ray.runner import run_experiment

    frames, wall, errors = [], {}, {}
    # One Ray for all methods: every method gets the same cluster (custom device resources come from
    # devices.mix, which --set applies to all methods alike), and Ray start-up is not in any wall time.
    started = ensure_ray(
        address if address is not None else base.runtime.address,
        local_custom_resources([base.devices]),
        quiet=quiet,
    )
    try:
        for method in methods:
            config = base.with_overrides({"method.name": method, "output_dir": str(out_dir / method)})
            log.warning(
                "bench_methods: running %s (%d rounds) -> %s",
                method,
                config.training.rounds,
                out_dir / method,
            )
            start = time.perf_counter()
            try:
                result = run_experiment(config, address=address, progress=False, quiet=True)
            except Exception as exc:  # keep benchmarking the other methods; the failure goes in the JSON
                log.error("bench_methods: %s failed: %s: %s", method, type(exc).__name__, exc)
                errors[method] = f"{type(exc).__name__}: {exc}"
                continue
            wall[method] = time.perf_counter() - start
            frames.append(result.rounds.assign(run=method))
            s = result.summary
            log.warning(
                "bench_methods: %s done: accuracy %.3f -> %.3f, simulated %.1fs, wall %.0fs",
                method,
                s["initial_accuracy"],
                s["final_accuracy"],
                s["sim_time_s"],
                wall[method],
            )
    finally:
        if started:
            ray.shutdown()
    rounds = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return rounds, wall, errors


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    methods = list(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
    config_path = Path(args.config) if args.config else shipped_config_path("fedspine.yaml")
    try:
        overrides = parse_overrides(args.overrides)
        base = load_config(config_path, overrides)
        for method in methods:  # validates every method name before Ray starts
            base.with_overrides({"method.name": method})
        if args.baseline not in methods:
            raise ConfigError(f"--baseline {args.baseline!r} must be one of --methods {methods}")
    except ConfigError as exc:
        print(f"bench_methods: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR

    out_dir = Path(
        args.out_dir or REPO_ROOT / "benchmarks" / "results" / datetime.now().strftime("%Y%m%d-%H%M%S")
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    rounds, wall, errors = run_methods(base, methods, out_dir, args.address, args.quiet)

    done = [m for m in methods if m not in errors]
    metrics: dict[str, dict] = {}
    speedups: dict[str, dict] = {}
    target = args.target
    if done:
        best = rounds.groupby("run")["test_accuracy"].max()
        if target is None:
            target = AUTO_TARGET_FRACTION * float(best.min())
            print(
                f"target: auto = {AUTO_TARGET_FRACTION} x min best accuracy {float(best.min()):.4f} "
                f"({best.idxmin()}) = {target:.4f}"
            )
        else:
            print(f"target: {target:.4f} (given)")
        metrics = method_metrics(rounds, target, wall)
        if args.baseline in metrics:
            speedups = method_speedups(rounds, metrics, args.baseline, target)
        print_table(metrics, speedups, target, args.baseline)
    for method, error in errors.items():
        print(f"{method}: FAILED: {error}")

    result = {
        "benchmark": "bench_methods",
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "config_path": str(config_path),
        "overrides": overrides,
        "methods": methods,
        "baseline": args.baseline,
        "target": target,
        "target_mode": "auto" if args.target is None else "given",
        "metrics": metrics,
        "speedups": speedups,
        "errors": errors,
        "run_dirs": {m: str(out_dir / m) for m in methods},
        "config": base.to_dict(),
        "versions": library_versions(),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    text = json.dumps(_finite(result), indent=2, default=_num)
    atomic_write_text(out_dir / JSON_NAME, text)
    if args.json_out:
        atomic_write_text(Path(args.json_out), text)
    print(f"results: {out_dir / JSON_NAME}" + (f" and {args.json_out}" if args.json_out else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
