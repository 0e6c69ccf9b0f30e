"""Heterogeneous-rank LoRA baselines: HetLoRA (Cho et al. 2024) and FlexLoRA (Bai et al. 2024).

Both give each client a fixed rank by device capability and train on the full (unpruned) model; they
differ in aggregation: HetLoRA zero-pads and averages factors, FlexLoRA averages full deltas and
re-factorises them by SVD.
"""

from __future__ import annotations

from fedspine_ray.strategies.base import ServerContext
from fedspine_ray.strategies.lora_base import LoRAStrategy, rank_by_capacity


class _CapacityRanked(LoRAStrategy):
    def setup(self, ctx: ServerContext) -> None:
        self.client_rank = rank_by_capacity(ctx, ctx.config.bandit.ranks)
        super().setup(ctx)

    def max_rank(self) -> int:
        return max(self.client_rank.values())

    def choose(self, rnd: int, client_id: int) -> tuple[float, int, int | None]:
        return 0.0, self.client_rank[client_id], None


class HetLoRA(_CapacityRanked):
    name = "hetlora"
    default_aggregation = "hetlora"


class FlexLoRA(_CapacityRanked):
    name = "flexlora"
    default_aggregation = "flexlora"
