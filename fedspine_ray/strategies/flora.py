"""FLoRA (Wang et al., NeurIPS 2024, arXiv 2409.05976): stacked heterogeneous-rank adapters, merged every round.

Averaging A and B separately (FedIT, HetLoRA) is not the average of the clients' updates ``B_k A_k``: the
cross terms ``B_j A_k`` add noise. FLoRA stacks instead (``flora`` aggregator, strategies/aggregate.py):
``A = [p_1 A_1; ...]``, ``B = [B_1, ...]`` gives ``B A = sum_k p_k B_k A_k`` exactly, for any mix of ranks.
The stacked adapter (rank ``sum_k r_k``) is merged into the global base at once, and every client starts
the next round from the merged base with a fresh adapter (PEFT's init: A Kaiming-uniform, B zero), as the
authors' code does (ATP-1010/FederatedLLM: ``merge_and_unload`` each round, a new ``get_peft_model`` per
client). Ranks follow device capability (:func:`~.capacity.rank_by_capacity` over ``bandit.ranks``), as for
HetLoRA and FlexLoRA.

Devices never download the whole model again after their first round: each merge is a new global version
logged in :attr:`LoRAStrategy.merge_log`, and a device holding the previous version replays the stacked
factors (:class:`~fedspine_ray.messages.Derivation`), i.e. downloads ``sum_k r_k (in + out)`` numbers per
adapted Linear, which is FLoRA's own downlink. Log entries no device can still need are dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence

import numpy as np
import torch

from fedspine_ray.messages import ClientAssignment, ClientOutcome, tensor_bytes
from fedspine_ray.modeling.adapters import init_factors, lora_target_shapes
from fedspine_ray.rounds.time_model import ArmWork
from fedspine_ray.strategies.capacity import CapacityRanked


class FLoRA(CapacityRanked):
    """Heterogeneous ranks by capability, stacking aggregation, merge into the base every round."""

    name = "flora"
    default_aggregation = "flora"

    def configure_round(self, rnd: int, client_ids: Sequence[int]) -> dict[int, ClientAssignment]:
        """The shared round (sub-model, rank, round policies), each client with a fresh adapter of its own.

        Every client's A is drawn independently (seeded by seed, round and client), as each of the authors'
        clients calls ``get_peft_model`` on its own; B is zero, so the round starts at the merged base.
        """
        assignments = super().configure_round(rnd, client_ids)
        shapes = lora_target_shapes(self.ctx.global_model, self.ctx.lora_targets)
        for cid, assignment in assignments.items():
            fresh = init_factors(shapes, assignment.rank, seed=self._adapter_seed(rnd, cid))
            assignments[cid] = dataclasses.replace(assignment, factors=fresh)
        return assignments

    def _adapter_seed(self, rnd: int, client_id: int) -> int:
        sequence = np.random.SeedSequence([self.ctx.config.seed, rnd, client_id, 26])
        return int(sequence.generate_state(1)[0])

    def after_aggregation(self, rnd: int, outcomes: Sequence[ClientOutcome]) -> dict[str, float]:
        """Merge the stacked adapter into the base (a new global version) and reset the global adapter.

        ``method.flora.server_lr`` scales the merged update (1.0, the paper's, merges the stack as it is); the
        scaled factors are what the merge log holds, so devices replay the same step.

        ``self.factors`` holds the stack (rank ``sum_k r_k``) when some client was usable; afterwards it is a
        zero-``B`` adapter, so evaluation, a prune step (``method.prune_global``) and the next round all see
        the merged base alone.
        """
        stacked_rank = 0
        if any(o.usable for o in outcomes):
            stacked_rank = max(a.shape[0] for a, _ in self.factors.values())
            step = self.ctx.config.method.flora.server_lr
            update = self.factors if step == 1.0 else {k: (a, b * step) for k, (a, b) in self.factors.items()}
            self.merge_into_base(update)
        self.factors = self._fresh_factors(seed=self.ctx.config.seed + self.version)
        self._forget_unneeded_merges()
        return {"stacked_rank": float(stacked_rank)}

    def global_prune_step(self, rnd: int) -> bool:
        """A prune step as every method's; the merge it logs is of a zero adapter (FLoRA merged already)."""
        pruned = super().global_prune_step(rnd)
        self._forget_unneeded_merges()
        return pruned

    def _forget_unneeded_merges(self) -> None:
        """Drop merge-log entries no device will replay: zero deltas, and versions every holder has.

        A device holding version ``v`` replays the merges after ``v``; one holding nothing downloads the
        current model whole. Without this the log would grow by a stacked adapter per round (and so would
        checkpoints).
        """
        held = [self.ctx.held_base(cid) for cid in self.ctx.client_num_samples]
        versions = [key[0] for key in held if isinstance(key, tuple)]
        oldest = min(versions, default=self.version)
        for version in list(self.merge_log):
            factors = self.merge_log[version]
            if version <= oldest or all(not torch.any(b) for _, b in factors.values()):
                del self.merge_log[version]

    def arm_work(self, client_id: int, ratio: float, rank: int) -> ArmWork:
        """The shared estimate plus the stacked merges the device replays (FLoRA's per-round downlink)."""
        work = super().arm_work(client_id, ratio, rank)
        held: Hashable | None = self.ctx.held_base(client_id)
        if not isinstance(held, tuple):
            return work
        replay = sum(
            tensor_bytes(self.merge_log[v])
            for v in range(held[0] + 1, self.version + 1)
            if v in self.merge_log
        )
        return dataclasses.replace(work, bytes_down=work.bytes_down + replay)
