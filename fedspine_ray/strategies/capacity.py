"""Per-device ranks from known device capability: the shared base of HetLoRA and FlexLoRA.

HetLoRA and FlexLoRA assign each client a fixed LoRA rank by what its device can afford (as their papers
do: capability known ahead, unlike FedSpine's bandit). Both train the full model; they differ only in
aggregation, which their own modules choose.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedspine_ray.strategies.base import ServerContext
from fedspine_ray.strategies.lora import LoRAStrategy


def rank_by_capacity(ctx: ServerContext, ranks: Sequence[int]) -> dict[int, int]:
    """Static rank per client for HetLoRA / FlexLoRA: stronger devices get higher ranks.

    Capacity is the device profile's FLOP/s (or the actor's CPUs without profiles); distinct capacities
    are spread evenly over the sorted rank levels, as HetLoRA assigns ranks by client capability.
    """
    levels = sorted(ranks)
    capacity = ctx.client_capacity
    distinct = sorted(set(capacity.values()))
    if len(distinct) == 1:
        return dict.fromkeys(capacity, levels[-1])
    out = {}
    for cid, cap in capacity.items():
        position = distinct.index(cap) / (len(distinct) - 1)
        out[cid] = levels[round(position * (len(levels) - 1))]
    return out


class CapacityRanked(LoRAStrategy):
    """A LoRA strategy whose clients train the full model at a fixed rank from :func:`rank_by_capacity`."""

    def setup(self, ctx: ServerContext) -> None:
        self.client_rank = rank_by_capacity(ctx, ctx.config.bandit.ranks)
        super().setup(ctx)

    def max_rank(self) -> int:
        return max(self.client_rank.values())

    def choose(self, rnd: int, client_id: int) -> tuple[float, int, int | None]:
        return 0.0, self.client_rank[client_id], None
