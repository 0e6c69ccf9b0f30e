"""Kill a ``fedspine run`` with SIGKILL during round k, resume it, and compare it with an uninterrupted run.

Both runs use the same config (``runtime.checkpoint_every=1`` is added); the killed one runs in its own
process group, which is killed whole (CLI, its Ray, server and client actors) as soon as the checkpoint of
round k-1 exists, then continues with ``fedspine run --resume``. Prints both runs' per-round metrics side by
side and the largest differences; exits 1 if bytes, simulated time or arms differ.

    python benchmarks/kill_and_resume.py CONFIG --kill-round 3 --out-dir /tmp/kr [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from fedspine_ray.launch.results import read_run
from fedspine_ray.runtime.checkpoint import checkpoint_round

ROUND_COLUMNS = ["round", "sim_time_s", "bytes_down", "bytes_up", "train_loss", "test_loss", "test_accuracy"]
EXACT = ["sim_time_s", "bytes_down", "bytes_up"]
CLIENT_EXACT = [
    "round",
    "client_id",
    "status",
    "arm",
    "pruning_ratio",
    "lora_rank",
    "bytes_down",
    "sim_time_s",
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", nargs="?", default=None)
    parser.add_argument("--kill-round", type=int, default=3, help="SIGKILL during this round (>= 2)")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    out = Path(args.out_dir)
    sets = [x for o in [*args.overrides, "runtime.checkpoint_every=1"] for x in ("--set", o)]
    # --overwrite: a rerun into the same --out-dir replaces the earlier runs (fedspine run refuses otherwise)
    cli = [sys.executable, "-m", "fedspine_ray.cli", "run", "--quiet", "--overwrite"]
    config = [args.config] if args.config else []
    env = {**os.environ, "RAY_ADDRESS": ""}

    start = time.perf_counter()
    subprocess.run([*cli, *config, *sets, "--output-dir", str(out / "uninterrupted")], check=True, env=env)
    print(f"uninterrupted run: {time.perf_counter() - start:.0f}s wall", flush=True)

    killed = out / "killed"
    process = subprocess.Popen(
        [*cli, *config, *sets, "--output-dir", str(killed)], env=env, start_new_session=True
    )
    while checkpoint_round(killed) != args.kill_round - 1:
        if process.poll() is not None:
            print("the run ended before it could be killed; lower --kill-round", file=sys.stderr)
            return 1
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    rows_at_kill = read_run(killed)[0]["round"].tolist()
    print(f"SIGKILL during round {args.kill_round}; rounds on disk: {rows_at_kill}", flush=True)
    subprocess.run([*cli, "--resume", str(killed)], check=True, env=env)

    ref_rounds, ref_clients = read_run(out / "uninterrupted")
    rounds, clients = read_run(killed)
    side = ref_rounds[ROUND_COLUMNS].merge(
        rounds[ROUND_COLUMNS], on="round", suffixes=(" (ref)", " (resumed)")
    )
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(side.to_string(index=False))
    close = ["train_loss", "test_loss", "test_accuracy"]
    print("max |diff|:", {c: float((ref_rounds[c] - rounds[c]).abs().max()) for c in close + EXACT})
    same = ref_rounds[EXACT].equals(rounds[EXACT]) and ref_clients[CLIENT_EXACT].equals(clients[CLIENT_EXACT])
    print("bytes, simulated time, arms and sub-models identical:", same)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
