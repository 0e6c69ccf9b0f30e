"""FedSpine (Yao et al., arXiv 2501.02438): iterative prune-and-tune with a per-device bandit.

Each round a per-device bandit picks (pruning ratio, LoRA rank); the device trains LoRA on the global
model pruned further by that ratio. Adapters from differently pruned sub-models are aggregated in global
coordinates: each sub-model's delta ``B @ A`` is zero outside its units, deltas are averaged and
re-factorised by SVD (``method.aggregation`` selects another rule, e.g. the coverage-aware
``fedspine``). On the pruning schedule the server merges the adapters into the base weights — so
nothing learned is lost — scores units (Taylor or magnitude) and prunes the global model toward
``pruning.target_sparsity``. The bandit is rewarded with training progress
and timeliness against the other clients' median completion time (docs/bandit.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedspine_ray.bandit import ArmGrid, DeviceBandits, fedspine_reward
from fedspine_ray.strategies.base import ClientOutcome, ServerContext
from fedspine_ray.strategies.lora_base import LoRAStrategy

FAILED_STATUSES = ("oom", "rejected", "actor_died")


class FedSpine(LoRAStrategy):
    name = "fedspine"
    #: Sample-weighted average of full deltas B@A in global coordinates, re-factorised by SVD. Measured on
    #: the shipped config it beat the coverage-aware factor average ("fedspine" aggregator, still
    #: selectable), whose mismatched B/A cross-terms made the global model unstable (see the issue notes).
    default_aggregation = "flexlora"
    prunes_globally = True

    def setup(self, ctx: ServerContext) -> None:
        bandit = ctx.config.bandit
        self.arms = ArmGrid(bandit.pruning_ratios, bandit.ranks)
        options = {"c": bandit.exploration}
        options.update({"gamma": bandit.gamma} if bandit.algorithm == "discounted_ucb" else {})
        options.update({"window": bandit.window} if bandit.algorithm == "sliding_window_ucb" else {})
        self.bandits = DeviceBandits(
            self.arms, ctx.config.clients.num_clients, bandit.algorithm, seed=ctx.config.seed, **options
        )
        super().setup(ctx)

    def max_rank(self) -> int:
        return max(self.ctx.config.bandit.ranks)

    def choose(self, rnd: int, client_id: int) -> tuple[float, int, int | None]:
        arm = self.bandits.select_index(client_id)
        ratio, rank = self.arms[arm]
        return float(ratio), int(rank), arm

    def after_aggregation(self, rnd: int, outcomes: Sequence[ClientOutcome]) -> dict[str, float]:
        rewards = self._reward_bandits(outcomes)
        return {"mean_reward": float(np.mean(rewards)) if rewards else math.nan}

    # ------------------------------------------------------------------ bandit feedback
    def _reference_time(self, outcome: ClientOutcome, outcomes: Sequence[ClientOutcome]) -> float:
        """The deadline, else the median completion time of the *other* clients this round.

        Leaving the device itself out matters: with a plain median, a slow device that is half the
        population moves the median with its own arm and sees no benefit from pruning.
        """
        devices = self.ctx.config.devices
        if devices.round_policy == "deadline" and devices.deadline_s:
            return float(devices.deadline_s)
        others = [
            o.sim_time_s
            for o in outcomes
            if o is not outcome and o.status not in FAILED_STATUSES and o.sim_time_s > 0
        ]
        if others:
            return float(np.median(others))
        return outcome.sim_time_s if outcome.sim_time_s > 0 else 1.0

    def _reward_bandits(self, outcomes: Sequence[ClientOutcome]) -> list[float]:
        rewards = []
        for outcome in outcomes:
            if outcome.assignment.arm is None:
                continue
            failed = outcome.status in FAILED_STATUSES
            reward = fedspine_reward(
                completion_time=outcome.sim_time_s if not failed else 1.0,
                reference_time=self._reference_time(outcome, outcomes),
                loss_before=None if failed else outcome.loss_first,
                loss_after=None if failed else outcome.loss_last,
                failed=failed,
            )
            self.bandits.update(outcome.client_id, outcome.assignment.arm, reward)
            outcome.extras["reward"] = reward
            rewards.append(reward)
        return rewards
