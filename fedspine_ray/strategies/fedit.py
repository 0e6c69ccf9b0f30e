"""FedIT: federated instruction tuning with plain LoRA FedAvg (Zhang et al. 2024), the no-pruning baseline.

Every client trains the same rank on the full model; A and B are averaged separately, weighted by samples.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn

from fedspine_ray.adapters import Factors, init_factors, linear_shapes, merge_factors, module_state
from fedspine_ray.strategies.base import (
    ClientAssignment,
    ClientOutcome,
    ServerContext,
    Strategy,
    average_states,
    weighted_mean,
)


class FedIT(Strategy):
    name = "fedit"

    def setup(self, ctx: ServerContext) -> None:
        super().setup(ctx)
        self.rank = ctx.config.lora.rank
        shapes = linear_shapes(ctx.global_model, ctx.lora_targets)
        self.factors: Factors = init_factors(shapes, self.rank, seed=ctx.config.seed)
        self.head = module_state(ctx.global_model, ctx.head_modules)

    def configure_round(self, rnd: int, client_ids: Sequence[int]) -> dict[int, ClientAssignment]:
        return {
            cid: ClientAssignment(
                base_key="dense",
                build_base=lambda: self.ctx.global_model,
                rank=self.rank,
                factors=self.factors,
                head=self.head,
            )
            for cid in client_ids
        }

    def aggregate_round(self, rnd: int, outcomes: Sequence[ClientOutcome]) -> dict[str, float]:
        usable = [o for o in outcomes if o.usable]
        if not usable:
            return {}
        weights = [o.num_samples for o in usable]
        self.factors = {
            name: (
                weighted_mean([o.factors[name][0] for o in usable], weights),
                weighted_mean([o.factors[name][1] for o in usable], weights),
            )
            for name in self.factors
        }
        self.head = average_states([o.head for o in usable], weights)
        return {}

    def evaluation_model(self) -> nn.Module:
        model = copy.deepcopy(self.ctx.global_model)
        merge_factors(model, self.factors)
        model.load_state_dict(self.head, strict=False)
        return model.eval()
