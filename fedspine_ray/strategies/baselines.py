"""Pruning baselines, for comparisons with FedSpine at equal final sparsity.

Each one isolates one of FedSpine's ingredients, so a sweep can say which of them its advantage comes from
(the FedSpine ablations, which keep everything but one ingredient, are in :mod:`.ablations`):

* ``fixed_ratio``: every device gets the same pruning ratio (``method.fixed_ratio``) and rank every round —
  pruning without per-device adaptation.
* ``random_arms``: each device draws a (ratio, rank) arm uniformly from the bandit's grid each round —
  adaptation without learning.
* ``prune_then_tune``: the global model is pruned once to ``pruning.target_sparsity`` before training,
  then plain FedIT — no iterative prune-and-tune.

All of them prune the global model on FedSpine's schedule (``method.prune_global: false`` turns it off
except for ``prune_then_tune``, which prunes up front instead) and aggregate like FedSpine.
"""

from __future__ import annotations

import numpy as np

from fedspine_ray.strategies.base import ServerContext
from fedspine_ray.strategies.fedspine import FedSpine
from fedspine_ray.strategies.lora import LoRAStrategy


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


BASELINES = (FixedRatio, RandomArms, PruneThenTune)
