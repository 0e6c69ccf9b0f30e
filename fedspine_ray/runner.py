"""Start Ray, create the server actor, step it round by round and record results.

This is the whole of what the launching process does; models and data live in the actors. It is the
entry point shared by the CLI, the tests and Ray Tune trainables.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from fedspine_ray.config import ExperimentConfig
from fedspine_ray.launch.checkpoint_files import checkpoint_bytes, write_checkpoint_file
from fedspine_ray.launch.preflight import check_gpus, check_inputs, gpu_request
from fedspine_ray.launch.ray_session import ensure_ray, local_custom_resources, server_placement
from fedspine_ray.launch.results import ResultsWriter

log = logging.getLogger("fedspine_ray")


@dataclass
class RunResult:
    output_dir: Path
    rounds: pd.DataFrame
    clients: pd.DataFrame
    summary: dict[str, Any]


def run_experiment(
    config: ExperimentConfig,
    address: str | None = None,
    progress: bool = True,
    quiet: bool = False,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    resume: bool = False,
) -> RunResult:
    """Run one federated experiment end to end and return its result tables.

    ``address`` overrides ``runtime.address`` (``"auto"`` joins a running cluster). ``on_round`` receives
    each per-round row (Ray Tune reports through it). ``resume`` continues the run in the output directory
    from its ``checkpoint.pt`` (``runtime.checkpoint_every``): rounds up to the checkpoint keep their rows,
    the rest run again exactly as the uninterrupted run would have run them.
    """
    address = address if address is not None else config.runtime.address
    output_dir = config.resolved_output_dir()
    checkpoint = checkpoint_bytes(output_dir) if resume else None  # fails before Ray starts without one
    check_inputs(config)  # the one pre-flight check: missing files / unknown sources fail before a Ray start
    check_gpus(config, address)  # GPUs asked of an embedded Ray on a machine without any
    import ray  # only once the inputs are known good

    from fedspine_ray.runtime.remote import RemoteServer

    started = ensure_ray(address, local_custom_resources([config.devices]), quiet, gpu_request(config))
    every = config.runtime.checkpoint_every
    # A resumed run's writer starts once the checkpoint's round is known (it keeps the rows up to it).
    writer = None if resume else ResultsWriter(output_dir, config)
    budget_rounds = config.training.sim_time_budget_fedit_rounds  # resolved into max_sim_time_s at set-up
    # GPUs (a one-rank ZeRO server) and the node: the head, which a cluster keeps, unless it needs a GPU
    server_options = {"num_cpus": 0, "max_restarts": 0, **server_placement(config.server)}
    server = ray.remote(RemoteServer).options(**server_options).remote(config)
    wall_start = time.perf_counter()
    try:
        info = ray.get(server.setup.remote())
        log.info(
            "setup: %d clients, %d train / %d test samples, labels %s, model %s (%.1fM params)",
            info["num_clients"],
            info["train_samples"],
            info["test_samples"],
            info["labels"],
            info["model_dir"],
            info["total_params"] / 1e6,
        )
        if info["config"] != config:  # the server resolved a derived value (rounds/budget.py): record it
            config = info["config"]
            log.info(
                "simulated-time budget %.1f s: dense FedIT's predicted time for %d rounds "
                "(training.sim_time_budget_fedit_rounds)",
                config.training.max_sim_time_s,
                budget_rounds,
            )
            if writer is not None:
                writer.write_config(config)
        first_round = 0
        if checkpoint is not None:
            first_round = ray.get(server.restore_state.remote(checkpoint)) + 1
            checkpoint = None  # the server has it; do not keep a second copy here
            log.info("resumed %s after round %d (checkpoint in %s)", config.name, first_round - 1, output_dir)
            writer = ResultsWriter(output_dir, config, resume_after=first_round - 1)
        assert writer is not None
        bar = tqdm(
            total=config.training.rounds,
            initial=max(0, first_round - 1),
            desc=config.name,
            unit="round",
            disable=not progress or quiet,
        )
        with bar:
            for rnd in range(first_round, config.training.rounds + 1):
                if _time_budget_spent(writer.round_rows, config):  # a resumed run that had already stopped
                    break
                checkpoint_due = bool(every and rnd > 0 and rnd % every == 0)
                # Round rnd + 1 may start while rnd is evaluated (round 0 included), but not across a
                # checkpoint: the clients' exported state must be the one after rnd.
                start_next = rnd < config.training.rounds and not checkpoint_due
                report = ray.get(server.run_round.remote(rnd, start_next))
                writer.add_round(report.round_row, report.client_rows)
                if checkpoint_due:  # after the rows, so a resume never lacks them
                    write_checkpoint_file(output_dir, *ray.get(server.encoded_checkpoint.remote(rnd)))
                _show(report.round_row, bar, config, progress and not quiet)
                if on_round is not None:
                    on_round(report.round_row)
            if _time_budget_spent(writer.round_rows, config):
                log.info(
                    "%s: simulated time budget of %.1f s (training.max_sim_time_s) spent after round %d",
                    config.name,
                    config.training.max_sim_time_s,
                    writer.round_rows[-1]["round"],
                )
        ray.get(server.shutdown.remote())
    finally:
        ray.kill(server)
        if started:
            ray.shutdown()
    rounds = writer.rounds()
    summary = {
        "name": config.name,
        "method": config.method.name,
        "rounds": int(rounds["round"].iloc[-1]),
        "initial_accuracy": float(rounds["test_accuracy"].iloc[0]),
        "final_accuracy": float(rounds["test_accuracy"].iloc[-1]),
        "best_accuracy": float(rounds["test_accuracy"].max()),
        "sim_time_s": float(rounds["sim_time_s"].iloc[-1]),
        "max_sim_time_s": config.training.max_sim_time_s,
        "sim_time_budget_fedit_rounds": budget_rounds,
        "wall_time_s": time.perf_counter() - wall_start,
        "output_dir": str(output_dir),
    }
    writer.write_summary(summary)
    return RunResult(output_dir, rounds, writer.clients(), summary)


def _time_budget_spent(round_rows: list[dict[str, Any]], config: ExperimentConfig) -> bool:
    """True once the last recorded round's simulated clock reached ``training.max_sim_time_s``."""
    return bool(round_rows) and config.training.budget_spent(round_rows[-1]["sim_time_s"])


def _show(row: dict[str, Any], bar: tqdm, config: ExperimentConfig, use_bar: bool) -> None:
    budget = config.training.max_sim_time_s
    sim = f"sim={row['sim_time_s']:.1f}s" + ("" if budget is None else f"/{budget:g}s")
    text = (
        f"round {row['round']}/{config.training.rounds} acc={row['test_accuracy']:.3f} "
        f"test_loss={row['test_loss']:.3f} train_loss={row['train_loss']:.3f} {sim} wall={row['wall_time_s']:.0f}s"
    )
    if not use_bar:
        log.info(text)
        return
    if row["round"] > 0:
        bar.update(1)
    bar.set_postfix(
        acc=f"{row['test_accuracy']:.3f}", loss=f"{row['train_loss']:.3f}", sim=f"{row['sim_time_s']:.0f}s"
    )
    bar.write(text)
