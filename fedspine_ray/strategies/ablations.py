"""FedSpine ablations: FedSpine with one ingredient removed, for sweeps that ask where its lead comes from.

* ``fedspine_no_bandit``: static arms from the devices' *known* capacity (slowest device: largest ratio and
  smallest rank) - what FedSpine's bandit must match without being told the capacities (its round budget is
  FedSpine's: the slowest device at the cheapest arm);
* ``fedspine_no_prune``: FedSpine whose devices never prune beyond the global model (ratio 0; the bandit
  picks ranks only); the global model is still pruned on the schedule, so sparsity is equal;
* ``fedspine_no_rank``: FedSpine with the rank fixed to the largest of ``bandit.ranks`` (the bandit picks
  ratios only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from fedspine_ray.config import BanditConfig
from fedspine_ray.messages import ClientOutcome
from fedspine_ray.strategies.base import ServerContext
from fedspine_ray.strategies.fedspine import FedSpine


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
        return ratio, rank, None

    def after_aggregation(self, rnd: int, outcomes: Sequence[ClientOutcome]) -> dict[str, float]:
        """No arm to learn (the round policies still learn the devices' speeds, as for every method)."""
        return {}


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


ABLATIONS = (FedSpineNoBandit, FedSpineNoPrune, FedSpineNoRank)
