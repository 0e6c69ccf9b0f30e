"""The run's clock: each client's task cost before a round, its completion time after it, the round's end.

The simulated clock charges each client the FLOPs of its actual (pruned) sub-model over its device's
current throughput plus its transfers over its bandwidth (devices/cost.py), and a task that does not fit
the device's memory fails as an OOM. Without device profiles (or with ``runtime.clock: wall``) a client's
time is its measured wall time. :class:`RoundClock` is the one owner of the run's time: ``now_s`` is what
rounds.parquet's ``sim_time_s`` records, time-based pruning schedules read and budgets are spent against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from fedspine_ray.config import ExperimentConfig
from fedspine_ray.devices.cost import estimate_training_flops, round_end_time, simulated_round_time
from fedspine_ray.devices.population import ClientDevice
from fedspine_ray.devices.workload import TaskCost, task_cost
from fedspine_ray.messages import ClientOutcome


class RoundClock:
    """Per-client costs before a round, the round's duration after it, and the run's time so far."""

    def __init__(self, config: ExperimentConfig, devices: Sequence[ClientDevice]) -> None:
        self.config = config
        self.devices = {d.client_id: d for d in devices}
        #: Seconds since round 1 began (simulated, or wall-clock seconds of the clients' fits).
        self.now_s = 0.0

    def estimate(
        self,
        client_id: int,
        base: nn.Module,
        rank: int,
        rnd: int,
        targets: Sequence[str],
        head_modules: Sequence[str],
    ) -> TaskCost:
        """What training ``base`` at ``rank`` in round ``rnd`` costs ``client_id``'s device (workload.py)."""
        device = self.devices[client_id]
        return task_cost(
            self.config,
            device.profile,
            client_id,
            device.memory_bytes,
            base,
            rank,
            rnd,
            targets,
            head_modules,
        )

    def close_round(self, outcomes: Sequence[ClientOutcome]) -> float:
        """Give every finished outcome its completion time, mark late ones, advance :attr:`now_s` by the
        round's duration and return it."""
        times: dict[int, float] = {}
        for outcome in outcomes:
            if outcome.status != "ok":
                continue
            metrics = outcome.metrics
            if self.config.runtime.clock == "wall" or outcome.conditions is None:
                # Measured local training only: transfers go through Ray's object store and are not timed.
                outcome.sim_time_s = outcome.wall_time_s
                metrics.sim_compute_s = outcome.wall_time_s
                metrics.sim_download_s = metrics.sim_upload_s = math.nan
            else:
                train_flops = estimate_training_flops(metrics.flops_per_token, metrics.tokens_processed)
                timing = simulated_round_time(
                    train_flops, metrics.bytes_down, metrics.bytes_up, outcome.conditions
                )
                outcome.sim_time_s = timing.total_s
                metrics.sim_compute_s = timing.compute_s
                metrics.sim_download_s = timing.download_s
                metrics.sim_upload_s = timing.upload_s
            times[outcome.client_id] = outcome.sim_time_s
        policy = self.config.rounds
        result = round_end_time(
            times, policy.end, policy.deadline_s, drop_stragglers=not policy.count_stragglers
        )
        for outcome in outcomes:
            if outcome.client_id in result.stragglers:
                outcome.late, outcome.late_counts = True, policy.count_stragglers
            if outcome.client_id in result.idle_s:
                outcome.metrics.sim_idle_s = result.idle_s[outcome.client_id]
        self.now_s += result.end_time
        return result.end_time
