"""HetLoRA (Cho et al., EMNLP 2024): heterogeneous ranks by device capability, zero-padded aggregation.

Every client trains the full (unpruned) model at a rank chosen by its device's capability; the server keeps
the global adapter at the largest rank, hands each client its leading ``r_k`` rank slices and averages the
zero-padded factors. The paper's two further mechanisms are options (``method.hetlora``, off by default so
that the plain zero-padding baseline stays what earlier results measured; docs/baselines.md):

* ``weighting: norm``: sparsity-weighted aggregation, each client's module weighted by ``||B_k A_k||_F`` over
  the clients' sum instead of by samples (the ``hetlora_sw`` aggregator);
* ``self_prune``: local rank self-pruning with decay ``prune_gamma``. After a round, a client whose tail slices
  ``[r', r)`` with ``r' = max(min_rank, floor(gamma r))`` carry a small share of its update's energy drops them,
  as if it had uploaded the pruned adapter, and trains at ``r'`` from then on; the server tracks each client's
  current rank (:attr:`HetLoRA.client_rank`). The paper decides on the client with a tail penalty in the local
  loss; here the test runs on the server on what the client sent (no penalty), by the rule in
  :meth:`HetLoRA.pruned_rank` (our reading, docs/baselines.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch

from fedspine_ray.messages import ClientOutcome
from fedspine_ray.modeling.adapters import Factors
from fedspine_ray.strategies.base import ServerContext
from fedspine_ray.strategies.capacity import CapacityRanked


def energy(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||B A||_F^2`` from the thin factors: ``sum((B^T B) * (A A^T))``, without the ``out x in`` product."""
    a64, b64 = a.double(), b.double()
    return float(((b64.T @ b64) * (a64 @ a64.T)).sum())


def _truncate(factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]], rank: int) -> Factors:
    return {name: (a[:rank], b[:, :rank]) for name, (a, b) in factors.items()}


class HetLoRA(CapacityRanked):
    name = "hetlora"
    default_aggregation = "hetlora"

    def setup(self, ctx: ServerContext) -> None:
        if ctx.config.method.hetlora.weighting == "norm":
            self.default_aggregation = "hetlora_sw"  # method.aggregation still overrides it
        super().setup(ctx)

    def pruned_rank(self, rank: int, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> int:
        """The rank a client keeps after its round: ``rank``, or ``r' = max(min_rank, floor(gamma rank))``.

        It prunes when its tail slices ``[r', rank)`` carry less than ``prune_threshold`` times their even
        share of the update's energy, summed over the adapted modules::

            sum ||B[:, r':] A[r':]||_F^2  <  prune_threshold * (rank - r') / rank * sum ||B A||_F^2
        """
        options = self.ctx.config.method.hetlora
        target = max(options.min_rank, math.floor(options.prune_gamma * rank))
        if target >= rank:
            return rank
        total = tail = 0.0
        for a, b in factors.values():
            total += energy(a, b)
            tail += energy(a[target:], b[:, target:])
        if total <= 0 or tail >= options.prune_threshold * (rank - target) / rank * total:
            return rank
        return target

    def aggregate_round(self, rnd: int, outcomes: Sequence[ClientOutcome]) -> dict[str, float]:
        """Self-prune each usable client's rank first (its upload is the truncated adapter), then aggregate."""
        pruned = 0
        if self.ctx.config.method.hetlora.self_prune:
            for outcome in outcomes:
                if not outcome.usable or outcome.factors is None:
                    continue
                rank = outcome.assignment.rank
                kept = self.pruned_rank(rank, outcome.factors)
                if kept < rank:
                    outcome.factors = _truncate(outcome.factors, kept)
                    start = _truncate(outcome.assignment.factors, kept)  # step normalisation's reference
                    outcome.assignment = dataclasses.replace(outcome.assignment, factors=start)
                    self.client_rank[outcome.client_id] = kept
                    pruned += 1
        metrics = super().aggregate_round(rnd, outcomes)
        if self.ctx.config.method.hetlora.self_prune:
            metrics["rank_prunes"] = float(pruned)
            metrics["mean_client_rank"] = sum(self.client_rank.values()) / len(self.client_rank)
        return metrics
