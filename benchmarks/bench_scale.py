"""Scale and overhead of the client runtimes: memory and where a round's wall time goes.

Each scenario is one ``fedspine run``-equivalent (``run_experiment``, embedded local Ray started and shut
down by the run) while a sampler thread reads ``/proc/<pid>/smaps_rollup`` of the whole Ray session (this
process and all its descendants: GCS, raylet, server, client actors / pool workers) every --interval s.
Reported per scenario:

* wall time of the run, rounds, placement, number of client processes;
* peak memory of the session: sum of PSS (proportional set size: shared pages split between processes,
  so the sum is the memory the session really uses) and sum of RSS, and the peak RSS of each kind of process
  (``ray::PoolWorker`` / ``ray::FederatedClient`` / ``ray::RemoteServer``, largest one);
* round wall-time breakdown, mean over rounds >= 1 (rounds.parquet columns, docs/results.md):
  ``server_configure_s``, ``dispatch_s``, ``wait_s``, ``aggregate_s``, ``next_round_start_s``, ``eval_s``,
  ``client_train_s_sum``. With ``runtime.overlap_evaluation`` (``--set runtime.overlap_evaluation=true``; by
  default only when the clients leave a CPU free) a round's evaluation runs while the next round's clients
  train, and the rounds' windows tile the run, so the fraction below stays exact; ``=false`` measures the
  serial round for comparison;
* compute fraction = time inside client training steps / (round wall time x CPUs used), summed over rounds
  >= 1; CPUs used = min(CPUs of the machine, client processes). With more client processes than cores the
  wall time inside steps includes time-slicing, so ``compute_fraction_cpu`` uses the CPU seconds the
  client processes spent in those steps instead (``client_train_cpu_s_sum``); it cannot exceed 1 per core;
* where the rounds' CPU time went, between the round-0 row and the last row (``rounds_*``): CPU seconds
  per role read from ``/proc/<pid>/stat`` (``server``, ``pool_workers`` / ``client_actors``, ``driver``:
  this process, including the memory sampler, ``ray_and_other``: GCS, raylet and Ray's helpers), the
  clients' CPU inside and outside training steps, and ``rounds_cpu_s_unused`` = wall x CPUs - all of it.

The memory sampler is not free: reading ``smaps_rollup`` makes the kernel walk every page table, about
0.14 CPU-s per sample over a 20-process session, so at ``--interval 1`` it takes some 7 % of a 2-core box
from the run it measures (``driver`` in ``rounds_cpu_s_by_role``). ``--interval 0`` turns it off (no memory
figures): measure the compute fraction that way, memory with the sampler on.

Scenarios (--scenario, repeatable; --placement overrides clients.placement for all of them):

* ``default``: the shipped default config (FedIT, 8 clients, 6 rounds);
* ``fedspine16``: the shipped fedspine.yaml (16 clients);
* ``testbed80``: the shipped testbed80.yaml (80 Jetsons);
* ``fedit1000``: the default config with 1,000 clients (IID, 20 000 training samples), 20 per round;
* ``fedit10000``: the default config with 10,000 virtual clients (IID over 20,000 samples, 2 each), 1 % (100)
  sampled per round, 2 rounds of 2 local steps: the population a pool worker serves without building it;
* ``fedit100``: the same data and per-round work with 100 clients, all sampled every round. Run with
  ``fedit10000`` (``--scenario fedit10000 --scenario fedit100``), the two give the **memory per idle virtual
  client**: (peak PSS with 10,000 clients - peak PSS with 100) / 9,900, the last JSON line.

Usage: python benchmarks/bench_scale.py --scenario testbed80 [--placement pooled|dedicated|auto]
       [--rounds N] [--set KEY=VALUE ...] [--interval S] [--out-dir DIR] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from fedspine_ray.config import ExperimentConfig, load_config, shipped_config_path  # noqa: E402

GIB = 1024**3
SCENARIOS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("default.yaml", {}),
    "fedspine16": ("fedspine.yaml", {}),
    "testbed80": ("testbed80.yaml", {}),
    "fedit1000": (
        "default.yaml",
        {
            "clients.num_clients": 1000,
            "clients.clients_per_round": 20,
            "partition.kind": "iid",
            "data.max_train_samples": 20000,
            "training.rounds": 3,
        },
    ),
    "fedit10000": (
        "default.yaml",
        {
            "clients.num_clients": 10_000,
            "clients.fraction_per_round": 0.01,
            "partition.kind": "iid",
            "partition.min_samples_per_client": 2,
            "data.max_train_samples": 20_000,
            "training.rounds": 2,
            "training.local_steps": 2,
        },
    ),
    "fedit100": (
        "default.yaml",
        {
            "clients.num_clients": 100,
            "partition.kind": "iid",
            "partition.min_samples_per_client": 2,
            "data.max_train_samples": 20_000,
            "training.rounds": 2,
            "training.local_steps": 2,
        },
    ),
}
#: Scenarios whose peak PSS difference, per extra client, is the memory of one idle virtual client.
IDLE_CLIENT_PAIR = ("fedit10000", "fedit100")
BREAKDOWN = (
    "server_configure_s",
    "dispatch_s",
    "wait_s",
    "aggregate_s",
    "next_round_start_s",
    "eval_s",
    "client_train_s_sum",
)


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (field 3 onwards), or None if the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _command_line(pid: int) -> str:
    """``/proc/<pid>/cmdline`` with spaces between the arguments ("" if the process is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    """All descendants of ``pid`` (from /proc: no psutil dependency)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _memory(pid: int) -> tuple[str, int, int] | None:
    """(process title, RSS bytes, PSS bytes) of one process, or None if it is gone."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        fields = {}
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, value = line.split(":", 1)
            fields[key] = int(value.split()[0]) * 1024
        return title, fields.get("Rss", 0), fields.get("Pss", 0)
    except (OSError, ValueError, IndexError):
        return None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` has used so far (its threads included), or None if it is gone."""
    fields = _stat_fields(pid)
    try:
        return None if fields is None else (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (ValueError, IndexError):
        return None


def _role(title: str) -> str:
    """A process's part in the run, stable while Ray renames it per task (``ray::PoolWorker.call``).

    ``driver`` (this process: the runner's polling and this benchmark's memory sampler) is told apart by pid.
    """
    for marker, role in (("PoolWorker", "pool_workers"), ("FederatedClient", "client_actors")):
        if marker in title:
            return role
    if "RemoteServer" in title:  # the server actor's class (runtime/remote.py) names its process
        return "server"
    return "ray_and_other"


def cpu_by_role() -> dict[str, float]:
    """CPU seconds used so far by this process tree, summed per :func:`_role`."""
    me = os.getpid()
    totals: dict[str, float] = {}
    for pid in [me, *_children(me)]:
        cpu = _cpu_seconds(pid)
        if cpu is None:
            continue
        role = "driver" if pid == me else _role(_command_line(pid))
        totals[role] = totals.get(role, 0.0) + cpu
    return totals


def _kind(title: str) -> str:
    if title.startswith("ray::"):
        return title.split()[0]
    return "driver" if "bench_scale" in title else Path(title.split()[0]).name or "other"


class MemorySampler(threading.Thread):
    """Peak PSS/RSS of this process tree (the whole embedded Ray session), sampled every ``interval`` s."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.stop_event = threading.Event()
        self.peak_pss = self.peak_rss = 0
        self.peak_by_kind: dict[str, int] = {}
        self.max_processes: dict[str, int] = {}

    def run(self) -> None:
        me = os.getpid()
        while not self.stop_event.is_set():
            pss = rss = 0
            counts: dict[str, int] = {}
            for pid in [me, *_children(me)]:
                sample = _memory(pid)
                if sample is None:
                    continue
                title, one_rss, one_pss = sample
                pss, rss = pss + one_pss, rss + one_rss
                kind = _kind(title)
                counts[kind] = counts.get(kind, 0) + 1
                self.peak_by_kind[kind] = max(self.peak_by_kind.get(kind, 0), one_rss)
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            for kind, n in counts.items():
                self.max_processes[kind] = max(self.max_processes.get(kind, 0), n)
            self.stop_event.wait(self.interval)


def _memory_figures(sampler: MemorySampler) -> dict[str, Any]:
    return {
        "peak_pss_gib": sampler.peak_pss / GIB,
        "peak_rss_gib": sampler.peak_rss / GIB,
        "peak_rss_by_process_gib": {k: v / GIB for k, v in sorted(sampler.peak_by_kind.items())},
        "max_processes": sampler.max_processes,
    }


def scenario_config(
    name: str, placement: str | None, rounds: int | None, out_dir: Path, extra: dict
) -> ExperimentConfig:
    file_name, overrides = SCENARIOS[name]
    overrides = {**overrides, **extra, "output_dir": str(out_dir / name)}
    if placement:
        overrides["clients.placement"] = placement
    if rounds is not None:
        overrides["training.rounds"] = rounds
    return load_config(shipped_config_path(file_name), overrides)


def summarise(rounds: Any, cpus: int) -> dict[str, float]:
    """Mean breakdown over rounds >= 1 and the compute fraction (module docstring)."""
    trained = rounds[rounds["round"] >= 1]
    used = trained["client_processes"].clip(upper=cpus)
    capacity = (trained["round_wall_time_s"] * used).sum()
    fraction = trained["client_train_s_sum"].sum() / capacity
    cpu_fraction = (
        trained["client_train_cpu_s_sum"].sum() / capacity
        if "client_train_cpu_s_sum" in trained
        else float("nan")
    )
    row = {f"mean_{col}": float(trained[col].mean()) for col in BREAKDOWN if col in trained}
    if "eval_overlapped" in trained:  # evaluation ran while the next round's clients trained
        row["eval_overlapped_rounds"] = int(trained["eval_overlapped"].sum())
    row.update(
        mean_round_wall_s=float(trained["round_wall_time_s"].mean()),
        compute_fraction=float(fraction),
        compute_fraction_cpu=float(cpu_fraction),
        final_accuracy=float(rounds["test_accuracy"].iloc[-1]),
    )
    return row


def run_scenario(config: ExperimentConfig, interval: float) -> dict[str, Any]:
    from fedspine_ray.runner import run_experiment

    sampler = MemorySampler(interval) if interval > 0 else None
    # CPU seconds per role between the round-0 row (set-up and first evaluation done) and the last row
    # (Ray is still up): where the rounds' CPU time went, and how much of it nobody used
    marks: dict[int, tuple[float, dict[str, float]]] = {}
    last = config.training.rounds

    def mark(row: dict[str, Any]) -> None:
        if row["round"] in (0, last):
            marks[row["round"]] = (time.perf_counter(), cpu_by_role())

    if sampler is not None:
        sampler.start()
    start = time.perf_counter()
    try:
        result = run_experiment(config, progress=False, quiet=True, on_round=mark)
    finally:
        if sampler is not None:
            sampler.stop_event.set()
            sampler.join()
    wall = time.perf_counter() - start
    rounds = result.rounds
    cpus = os.cpu_count() or 1
    cpu_use: dict[str, Any] = {}
    if 0 in marks and last in marks:
        (t0, before), (t1, after) = marks[0], marks[last]
        used = {role: after.get(role, 0.0) - before.get(role, 0.0) for role in after}
        trained = rounds[rounds["round"] >= 1]
        in_steps = float(trained["client_train_cpu_s_sum"].sum())
        clients = used.get("pool_workers", 0.0) + used.get("client_actors", 0.0)
        cpu_use = {
            "rounds_wall_s": t1 - t0,
            "rounds_cpu_s_by_role": {k: round(v, 2) for k, v in sorted(used.items())},
            "rounds_cpu_s_in_training_steps": in_steps,
            "rounds_cpu_s_clients_outside_steps": clients - in_steps,
            "rounds_cpu_s_unused": (t1 - t0) * cpus - sum(used.values()),
        }
    return {
        "name": config.name,
        "placement": config.clients.placement,
        "num_clients": config.clients.num_clients,
        "per_round": config.clients.per_round() or config.clients.num_clients,
        "rounds": config.training.rounds,
        "client_processes": int(rounds["client_processes"].iloc[-1]),
        "wall_s": wall,
        **(_memory_figures(sampler) if sampler is not None else {"memory_sampler": "off (--interval 0)"}),
        "cpus": cpus,
        **summarise(rounds, cpus),
        **cpu_use,
    }


def idle_client_memory(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Memory per idle virtual client from the :data:`IDLE_CLIENT_PAIR` runs (None unless both ran with the
    sampler on): the peak session PSS difference over the difference in clients, the per-round work equal."""
    by_name = {r["scenario"]: r for r in results if "peak_pss_gib" in r}
    many, few = (by_name.get(name) for name in IDLE_CLIENT_PAIR)
    if many is None or few is None:
        return None
    extra = many["num_clients"] - few["num_clients"]
    delta = (many["peak_pss_gib"] - few["peak_pss_gib"]) * GIB
    return {
        "scenario": "idle_virtual_client",
        "clients": [many["num_clients"], few["num_clients"]],
        "peak_pss_gib": [many["peak_pss_gib"], few["peak_pss_gib"]],
        "kib_per_idle_client": delta / extra / 1024,
        "under_6_gib": many["peak_pss_gib"] < 6.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), required=True)
    parser.add_argument("--placement", choices=["auto", "dedicated", "pooled"], default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="memory sampling period in s; 0: no sampler (module doc)"
    )
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench_scale"))
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import yaml

    extra = {}
    for item in args.set:
        key, _, value = item.partition("=")
        extra[key] = yaml.safe_load(value)
    results = []
    for name in args.scenario:
        config = scenario_config(name, args.placement, args.rounds, args.out_dir, extra)
        result = {"scenario": name, **run_scenario(config, args.interval)}
        results.append(result)
        print(json.dumps(result), flush=True)
    idle = idle_client_memory(results)
    if idle is not None:
        results.append(idle)
        print(json.dumps(idle), flush=True)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
