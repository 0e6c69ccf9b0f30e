"""The rows a round writes: one per round (rounds.parquet) and one per selected client (clients.parquet).

One owner of the results schema that docs/results.md documents: the server hands over what it measured
and these functions name and order the columns. Plain Python values only, so the launching process can
write them without torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedspine_ray.messages import ClientOutcome

#: Simulated-time breakdown of each client's round (DeviceTimer.close_round): download + compute + upload =
#: ``sim_time_s``; ``sim_idle_s`` is the wait for the round's slowest device. NaN where not measured.
SIM_TIME_COLUMNS = ("sim_download_s", "sim_compute_s", "sim_upload_s", "sim_idle_s")


def client_row(rnd: int, outcome: ClientOutcome, device_class: str, default_steps: int) -> dict[str, Any]:
    """One row of clients.parquet."""
    metrics, assignment = outcome.metrics, outcome.assignment
    return {
        "round": rnd,
        "client_id": outcome.client_id,
        "device_class": device_class,
        "status": outcome.status,
        "num_samples": outcome.num_samples,
        "pruning_ratio": assignment.pruning_ratio,
        "lora_rank": assignment.rank,
        "arm": -1 if assignment.arm is None else assignment.arm,
        "local_steps": assignment.steps(default_steps),
        "loss_first": outcome.loss_first,
        "loss_last": outcome.loss_last,
        "loss_mean": outcome.loss_mean,
        "sim_time_s": outcome.sim_time_s,
        **{col: float(getattr(metrics, col)) for col in SIM_TIME_COLUMNS},
        "wall_time_s": outcome.wall_time_s,
        "bytes_down": int(metrics.bytes_down),
        "bytes_up": int(metrics.bytes_up),
        "base_transfer": metrics.base_transfer,
        "flops_per_token": float(metrics.flops_per_token),
        "tokens_processed": int(metrics.tokens_processed),
        "units_pruned_on_device": int(metrics.units_pruned_on_device),
        "memory_required_bytes": int(metrics.memory_required_bytes),
        "memory_available_bytes": int(metrics.memory_available_bytes),
        "model_params": int(metrics.model_params),
        "trainable_params": int(metrics.trainable_params),
        "reward": float(metrics.reward),
        "node_id": metrics.node_id,
        "accelerator": metrics.accelerator,
        "gpu_memory_peak_bytes": int(metrics.gpu_memory_peak_bytes),
    }


def timing_columns(outcomes: Sequence[ClientOutcome]) -> dict[str, float]:
    """Where the clients' part of a round's wall time went (docs/results.md, benchmarks/bench_scale.py)."""
    fits = [o for o in outcomes if o.wall_time_s is not None and not math.isnan(o.wall_time_s)]
    train_times = [float(o.metrics.train_time_s) for o in fits]
    return {
        "client_fit_s_sum": float(sum(o.wall_time_s for o in fits)),
        "client_train_s_sum": float(sum(train_times)),
        "client_train_s_max": float(max(train_times, default=0.0)),
        "client_train_cpu_s_sum": float(sum(o.metrics.train_cpu_s for o in fits)),
    }


def round_row(
    rnd: int,
    method: str,
    outcomes: Sequence[ClientOutcome],
    evaluation: Mapping[str, float],
    clock: Mapping[str, float],
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """One row of rounds.parquet: ``evaluation`` (test loss/accuracy, majority, total_params), ``clock``
    (simulated and wall times), then ``extra`` (timing, the strategy's global and round metrics), then the
    task's further evaluation columns (``eval_samples``, ``eval_cpu_s``, ``test_perplexity``,
    ``test_accuracy_class_<label>``: modeling/tasks.py)."""
    usable = [o for o in outcomes if o.usable]
    named = ("test_loss", "test_accuracy", "majority_accuracy", "total_params")
    return {
        "round": rnd,
        "method": method,
        "sim_time_s": clock["sim_time_s"],
        "round_sim_time_s": clock["round_sim_time_s"],
        "wall_time_s": clock["wall_time_s"],
        "round_wall_time_s": clock["round_wall_time_s"],
        "train_loss": float(np.mean([o.loss_mean for o in usable])) if usable else math.nan,
        "test_loss": evaluation["test_loss"],
        "test_accuracy": evaluation["test_accuracy"],
        "majority_accuracy": evaluation["majority_accuracy"],
        "bytes_down": int(sum(o.metrics.bytes_down for o in outcomes)),
        "bytes_up": int(sum(o.metrics.bytes_up for o in outcomes)),
        "num_selected": len(outcomes),
        "num_aggregated": len(usable),
        "trainable_params": int(np.mean([o.metrics.trainable_params for o in usable])) if usable else 0,
        "total_params": evaluation["total_params"],
        **extra,
        **{key: value for key, value in evaluation.items() if key not in named},
    }
