"""LEGEND-style LoRA depth and rank distribution (Liu et al., arXiv 2412.20004), without pruning.

LEGEND's observation (abstract, first-hand): LoRA layers with higher ranks placed near the output save
resources at comparable accuracy; a device's "LoRA depth" (how many layers, counted from the output, carry
LoRA) and the "rank distribution" over them are configured per device by capability. Training adapters on the
top ``d`` of ``L`` blocks only stops the backward pass at block ``L - d``: compute, activation memory and the
adapters sent shrink with ``d`` (devices/workload.py :func:`~fedspine_ray.devices.workload.backward_reach`
charges exactly that). The method section and code are not public, so the allocation is our reading
(docs/baselines.md):

* depth by device capability, spread evenly from ``method.legend.min_depth`` (weakest) to ``max_depth``
  (strongest; default every block), as HetLoRA spreads ranks (:func:`~.capacity.rank_by_capacity`);
* one rank per block, shared by every device and non-decreasing toward the output (``rank_profile:
  increasing`` spreads ``bandit.ranks`` from the input-most to the output-most block), realised on the client
  with PEFT's ``rank_pattern``; ``uniform`` puts ``lora.rank`` on every block;
* aggregation per module over the clients that trained it (every aggregator merges a module over the updates
  that hold it and keeps the previous value where none does); all of a module's clients share its rank, so the
  default zero-padding ``hetlora`` rule is exactly FedAvg per module.

Each client's assignment names its modules (:attr:`~fedspine_ray.messages.ClientAssignment.lora_modules`): the
server hands them to PEFT as its targets, validates the reply against them and charges their cost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import nn

from fedspine_ray.devices.workload import adapter_bytes, backward_reach
from fedspine_ray.messages import ClientAssignment, ClientOutcome
from fedspine_ray.modeling.adapters import lora_target_shapes
from fedspine_ray.pruning.architectures import UnsupportedArchitectureError, layer_specs
from fedspine_ray.rounds.time_model import ArmWork
from fedspine_ray.strategies.base import ServerContext
from fedspine_ray.strategies.capacity import rank_by_capacity
from fedspine_ray.strategies.lora import LoRAStrategy


def block_modules(model: nn.Module, targets: Sequence[str]) -> list[list[str]]:
    """The LoRA target Linears of each transformer block, input-most block first (full module names).

    Raises ``ValueError`` (naming the fix) when the blocks are unknown or a target lies outside them: LoRA
    depth is counted in blocks.
    """
    try:
        prefixes = [spec.prefix + "." for spec in layer_specs(model)]
    except UnsupportedArchitectureError as exc:
        raise ValueError(f"legend: LoRA depth needs the model's transformer blocks ({exc})") from None
    blocks: list[list[str]] = [[] for _ in prefixes]
    for name in lora_target_shapes(model, targets):
        block = next((i for i, prefix in enumerate(prefixes) if name.startswith(prefix)), None)
        if block is None:
            raise ValueError(
                f"legend: LoRA target {name!r} lies outside the transformer blocks; fix: lora.target_modules: auto "
                "or a list of block Linears"
            )
        blocks[block].append(name)
    return blocks


def block_ranks(num_blocks: int, levels: Sequence[int]) -> list[int]:
    """Ranks rising from ``min(levels)`` at the input-most block to ``max(levels)`` at the output-most one."""
    ordered = sorted(set(int(r) for r in levels))
    if num_blocks == 1:
        return [ordered[-1]]
    return [ordered[round(b / (num_blocks - 1) * (len(ordered) - 1))] for b in range(num_blocks)]


class Legend(LoRAStrategy):
    """Each device trains LoRA on its top ``depth`` blocks, with ranks rising toward the output; no pruning."""

    name = "legend"
    default_aggregation = "hetlora"

    def setup(self, ctx: ServerContext) -> None:
        cfg = ctx.config
        options = cfg.method.legend
        #: Adapted Linears per block, input-most first.
        self.blocks = block_modules(ctx.global_model, ctx.lora_targets)
        count = len(self.blocks)
        uniform = options.rank_profile == "uniform"
        #: Rank of each block's adapters (the same for every device that trains the block).
        self.block_rank = [cfg.lora.rank] * count if uniform else block_ranks(count, cfg.bandit.ranks)
        high = min(count, options.max_depth or count)
        low = min(options.min_depth, high)
        #: Blocks each client trains, counted from the output: capacities spread evenly over the depths.
        self.client_depth = rank_by_capacity(ctx, list(range(low, high + 1)))
        self._reach: dict[tuple[int, int], float] = {}  # (global version, depth) -> backward_reach share
        super().setup(ctx)

    def max_rank(self) -> int:
        return max(self.block_rank)

    def modules_of(self, client_id: int) -> list[str]:
        """The full names of the Linears ``client_id`` trains: every target of its top ``depth`` blocks."""
        depth = self.client_depth[client_id]
        return [name for block in self.blocks[len(self.blocks) - depth :] for name in block]

    def module_ranks(self, client_id: int) -> dict[str, int]:
        depth = self.client_depth[client_id]
        first = len(self.blocks) - depth
        return {name: self.block_rank[b] for b in range(first, len(self.blocks)) for name in self.blocks[b]}

    def choose(self, rnd: int, client_id: int) -> tuple[float, int, int | None]:
        """Ratio 0 and the client's largest block rank (the rank its reply is validated against)."""
        depth = self.client_depth[client_id]
        return 0.0, max(self.block_rank[len(self.blocks) - depth :]), None

    def configure_round(self, rnd: int, client_ids: Sequence[int]) -> dict[int, ClientAssignment]:
        """The shared round, each client's adapter cut to its blocks and to each block's rank."""
        assignments = super().configure_round(rnd, client_ids)
        for cid, assignment in assignments.items():
            ranks = self.module_ranks(cid)
            factors = {
                name: (
                    assignment.factors[name][0][:rank].clone(),
                    assignment.factors[name][1][:, :rank].clone(),
                )
                for name, rank in ranks.items()
            }
            assignments[cid] = dataclasses.replace(assignment, factors=factors, lora_modules=list(ranks))
        return assignments

    def arm_work(self, client_id: int, ratio: float, rank: int) -> ArmWork:
        """The shared estimate with the client's own adapters, and compute cut to the backward pass it runs."""
        work = super().arm_work(client_id, ratio, rank)
        model = self.ctx.global_model
        shapes = lora_target_shapes(model, self.ctx.lora_targets)
        element = next(model.parameters()).element_size()
        every = adapter_bytes(shapes, rank, element)
        own = sum(r * sum(shapes[name]) for name, r in self.module_ranks(client_id).items()) * element
        key = (self.version, self.client_depth[client_id])
        if key not in self._reach:
            self._reach[key] = backward_reach(model, self.modules_of(client_id))[0]
        scale = (1.0 + self._reach[key]) / 2.0
        return ArmWork(work.compute * scale, work.bytes_down - every + own, work.bytes_up - every + own)

    def after_aggregation(self, rnd: int, outcomes: Sequence[ClientOutcome]) -> dict[str, float]:
        depths = [self.client_depth[o.client_id] for o in outcomes if o.usable]
        return {"mean_lora_depth": sum(depths) / len(depths) if depths else float("nan")}
