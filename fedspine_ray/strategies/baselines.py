"""Pruning baselines and FedSpine ablations, for comparisons at equal final sparsity.

Each one isolates one of FedSpine's ingredients, so a sweep can say which of them its advantage comes from:

* ``fixed_ratio``: every device gets the same pruning ratio (``method.fixed_ratio``) and rank every round —
  pruning without per-device adaptation.
* ``random_arms``: each device draws a (ratio, rank) arm uniformly from the bandit's grid each round —
  adaptation without learning.
* ``prune_then_tune``: the global model is pruned once to ``pruning.target_sparsity`` before training,
  then plain FedIT — no iterative prune-and-tune.
* ``fedspine_no_bandit``: static arms from the devices' *known* capacity (slowest device: largest ratio and
  smallest rank) — what FedSpine's bandit must match without being told the capacities. The round-time
  model still learns the devices' speeds, so ``bandit.fill_budget`` works as with FedSpine.
* ``fedspine_no_prune``: FedSpine whose devices never prune beyond the global model (ratio 0; the bandit
  picks ranks only); the global model is still pruned on the schedule, so sparsity is equal.
* ``fedspine_no_rank``: FedSpine with the rank fixed to the largest of ``bandit.ranks`` (the bandit picks
  ratios only).

All of them prune the global model on FedSpine's schedule (``method.prune_global: false`` turns it off
except for ``prune_then_tune``, which prunes up front instead) and aggregate like FedSpine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from fedspine_ray.config import BanditConfig
from fedspine_ray.strategies.base import ClientOutcome, ServerContext
from fedspine_ray.strategies.fedspine import FedSpine
from fedspine_ray.strategies.lora_base import LoRAStrategy


class _PrunedBaseline(LoRAStrategy):
    default_aggregation = FedSpine.default_aggregation
    prunes_globally = True


class FixedRatio(_PrunedBaseline):
    """One pruning ratio and one rank (``lora.rank``) for every device, every round."""

    name = "fixed_ratio"

    def setup(self, ctx: ServerContext) -> None:
        super().setup(ctx)
        fixed = ctx.config.method.fixed_ratio
        self.ratio = float(np.median(ctx.config.bandit.pruning_ratios)) if fixed is None else float(fixed)

    def choose(self, rnd: int, client_id: int) -> tuple[float, int, int | None]:
        return self.ratio, self.ctx.config.lora.rank, None


class RandomArms(_PrunedBaseline):
    """A uniformly random (ratio, rank) from the bandit's grid per device and round (seeded)."""

    name = "random_arms"

    def max_rank(self) -> int:
        return max(self.ctx.config.bandit.ranks)

    def choose(self, rnd: int, client_id: int) -> tuple[float, int, int | None]:
        bandit = self.ctx.config.bandit
        rng = np.random.default_rng([self.ctx.config.seed, rnd, client_id, 11])
        arm = int(rng.integers(len(bandit.pruning_ratios) * len(bandit.ranks)))
        ratio, rank = divmod(arm, len(bandit.ranks))
        return float(bandit.pruning_ratios[ratio]), int(bandit.ranks[rank]), arm


class PruneThenTune(LoRAStrategy):
    """One-shot prune of the pretrained model to the target sparsity, then FedIT on the pruned model."""

    name = "prune_then_tune"
    default_aggregation = "fedavg"

    def setup(self, ctx: ServerContext) -> None:
        super().setup(ctx)
        self.prune_to(ctx.config.pruning.target_sparsity)
        self.prune_global = False


class FedSpineNoBandit(FedSpine):
    """FedSpine with arms fixed by the devices' known capacity instead of learned (an oracle-ish ablation)."""

    name = "fedspine_no_bandit"

    def setup(self, ctx: ServerContext) -> None:
        super().setup(ctx)
        bandit = ctx.config.bandit
        ratios, ranks = sorted(bandit.pruning_ratios, reverse=True), sorted(bandit.ranks)
        capacity = ctx.client_capacity
        distinct = sorted(set(capacity.values()))
        self.static_arm: dict[int, tuple[float, int]] = {}
        for cid, cap in capacity.items():
            position = distinct.index(cap) / max(1, len(distinct) - 1)  # 0 = slowest, 1 = fastest
            self.static_arm[cid] = (
                float(ratios[round(position * (len(ratios) - 1))]),
                int(ranks[round(position * (len(ranks) - 1))]),
            )

    def choose(self, rnd: int, client_id: int) -> tuple[float, int, int | None]:
        ratio, rank = self.static_arm[client_id]
        if self.ctx.config.bandit.predict_time:  # the round-time model still runs: bandit.fill_budget uses it
            self._round_work[client_id] = self.arm_work(client_id, ratio, rank)
        return ratio, rank, None

    def after_aggregation(self, rnd: int, outcomes: Sequence[ClientOutcome]) -> dict[str, float]:
        """No arm to learn; the devices' speeds are still observed (the time model of ``fill_budget``)."""
        self._observe_times(outcomes)
        return {"time_budget_s": self._budget} if self._budget is not None else {}


class _FedSpineRestricted(FedSpine):
    """FedSpine whose bandit searches a restricted space (one dimension pinned)."""

    def restrict(self, bandit: BanditConfig) -> BanditConfig:
        raise NotImplementedError

    def setup(self, ctx: ServerContext) -> None:
        cfg = ctx.config
        ctx.config = dataclasses.replace(cfg, bandit=self.restrict(cfg.bandit))
        super().setup(ctx)


class FedSpineNoPrune(_FedSpineRestricted):
    name = "fedspine_no_prune"

    def restrict(self, bandit: BanditConfig) -> BanditConfig:
        return dataclasses.replace(bandit, pruning_ratios=[0.0])


class FedSpineNoRank(_FedSpineRestricted):
    name = "fedspine_no_rank"

    def restrict(self, bandit: BanditConfig) -> BanditConfig:
        return dataclasses.replace(bandit, ranks=[max(bandit.ranks)])


BASELINES = (FixedRatio, RandomArms, PruneThenTune, FedSpineNoBandit, FedSpineNoPrune, FedSpineNoRank)
