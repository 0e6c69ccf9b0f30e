"""FedSpine (Yao et al., arXiv 2501.02438): iterative prune-and-tune with a per-device bandit.

Each round a per-device bandit picks (pruning ratio, LoRA rank); the device trains LoRA on the global
model pruned further by that ratio. Adapters from differently pruned sub-models are aggregated in global
coordinates: each sub-model's delta ``B @ A`` is zero outside its units, deltas are averaged and
re-factorised by SVD (``method.aggregation`` selects another rule, e.g. the coverage-aware
``fedspine``). On the pruning schedule the server merges the adapters into the base weights — so
nothing learned is lost — scores units (Taylor or magnitude) and prunes the global model toward
``pruning.target_sparsity``. The bandit is a grid UCB or S-UCB over the continuous (ratio, rank) space
(``bandit.algorithm: s_ucb``, fedspine_ray/bandits/sucb.py); it is rewarded with the multi-term reward (loss
improvement, pruning progress, LoRA-update importance, timeliness against the other clients' median
completion time) or the earlier progress + timeliness one (``bandit.reward``; docs/bandit.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from fedspine_ray.bandits import Arm, DeviceLearners, build_learners
from fedspine_ray.bandits.reward import fedspine_reward, multi_term_reward, pruning_progress, timeliness
from fedspine_ray.messages import ClientOutcome
from fedspine_ray.strategies.base import ServerContext
from fedspine_ray.strategies.lora import LoRAStrategy


def _cheapest_first(ratio: float, rank: int) -> float:
    """Orders arms by how little they ask (largest ratio, then smallest rank): for devices never observed."""
    return -ratio + rank * 1e-6


class FedSpine(LoRAStrategy):
    name = "fedspine"
    #: Sample-weighted average of full deltas B@A in global coordinates, re-factorised by SVD. Measured on
    #: the shipped config it beat the coverage-aware factor average ("fedspine" aggregator, still
    #: selectable), whose mismatched B/A cross-terms made the global model unstable (see the issue notes).
    default_aggregation = "flexlora"
    prunes_globally = True

    def setup(self, ctx: ServerContext) -> None:
        bandit = ctx.config.bandit
        #: One learner per device (or one shared) of ``bandit.algorithm``: grid UCB or S-UCB.
        self.bandits: DeviceLearners = build_learners(bandit, ctx.config.clients.num_clients, ctx.config.seed)
        #: Devices that ran out of memory on the dense arm (``bandit.prefer_dense`` no longer forces it).
        self.dense_failed: set[int] = set()
        super().setup(ctx)

    def max_rank(self) -> int:
        return max(self.ctx.config.bandit.ranks)

    def cheapest_option(self, rnd: int, client_id: int) -> tuple[float, int]:
        """The arm asking least of any device: the largest pruning ratio at the smallest rank."""
        return max(self.ctx.config.bandit.pruning_ratios), min(self.ctx.config.bandit.ranks)

    def choose(self, rnd: int, client_id: int) -> tuple[float, int, int | None]:
        """(ratio, rank, arm): the grid arm's index, or for S-UCB the id of the leaf cell played.

        With ``rounds.time_model`` the bandit chooses only among arms predicted to finish within the
        round's budget (rounds/policy.py); a device never observed plays the cheapest arm (largest
        ratio, smallest rank), so an unknown phone cannot hold the first round back with the full model.
        """
        cost, budget = None, math.inf
        if self.ctx.config.rounds.time_model:
            if self.policy.knows(client_id):
                cost = lambda p, r: self.predicted_time(client_id, p, r)  # noqa: E731
                budget = self.policy.budget
                dense = self._dense_arm(client_id, cost, budget)
                if dense is not None:
                    return dense.ratio, dense.rank, dense.key
            else:
                cost, budget = _cheapest_first, -math.inf
        arm = self.bandits.select(client_id, cost, budget)
        return arm.ratio, arm.rank, arm.key

    def _dense_arm(self, client_id: int, cost: Callable[[float, int], float], budget: float) -> Arm | None:
        """``bandit.prefer_dense``: the largest arm for a device that can run it within the round's budget.

        The round's length is set by its slowest devices; a device that can run the unpruned (global) model
        at the largest rank without delaying anyone gains no round time by pruning, and with ``rounds.fill``
        a smaller sub-model only buys it more steps on fewer units, while its update then covers only part of
        the model (and is diluted where it has none). So such a device trains the largest arm and the bandit
        searches only for the devices that must prune to keep up. A device that ran out of memory on the
        dense arm is left to the bandit from then on. The reward still updates the arm played.
        """
        bandit = self.ctx.config.bandit
        if not bandit.prefer_dense or client_id in self.dense_failed:
            return None
        ratio, rank = min(bandit.pruning_ratios), max(bandit.ranks)
        if not cost(ratio, rank) <= budget:
            return None
        return self.bandits.arm_of(client_id, ratio, rank)

    def after_aggregation(self, rnd: int, outcomes: Sequence[ClientOutcome]) -> dict[str, float]:
        rewards = self._reward_bandits(outcomes)
        return {"mean_reward": float(np.mean(rewards)) if rewards else math.nan}

    # ------------------------------------------------------------------ bandit feedback
    def _reference_time(self, outcome: ClientOutcome, outcomes: Sequence[ClientOutcome]) -> float:
        """The deadline, else the round's time budget, else the median completion time of the *other*
        clients this round.

        Leaving the device itself out matters: with a plain median, a slow device that is half the
        population moves the median with its own arm and sees no benefit from pruning.
        """
        policy = self.ctx.config.rounds
        if policy.end == "deadline" and policy.deadline_s:
            return float(policy.deadline_s)
        if math.isfinite(self.policy.budget):
            return self.policy.budget  # rounds.time_model: finishing within the budget delayed nobody
        others = [o.sim_time_s for o in outcomes if o is not outcome and not o.failed and o.sim_time_s > 0]
        if others:
            return float(np.median(others))
        return outcome.sim_time_s if outcome.sim_time_s > 0 else 1.0

    def _reward_bandits(self, outcomes: Sequence[ClientOutcome]) -> list[float]:
        bandit = self.ctx.config.bandit
        terms = self._reward_terms(outcomes) if bandit.reward == "multi_term" else {}
        rewards = []
        for outcome in outcomes:
            if outcome.assignment.arm is None:
                continue
            failed = outcome.failed
            if bandit.reward == "multi_term":
                reward = multi_term_reward(
                    terms.get(outcome.client_id, {}), bandit.reward_weights, failed=failed
                )
            else:
                reward = fedspine_reward(
                    completion_time=outcome.sim_time_s if not failed else 1.0,
                    reference_time=self._reference_time(outcome, outcomes),
                    loss_before=None if failed else outcome.loss_first,
                    loss_after=None if failed else outcome.loss_last,
                    failed=failed,
                )
            assignment = outcome.assignment
            arm = Arm(assignment.pruning_ratio, assignment.rank, assignment.arm)
            if outcome.status == "oom":  # what follows for the device's larger arms is the learner's call
                self.bandits.failed(outcome.client_id, arm, reward)
                if assignment.pruning_ratio <= min(self.ctx.config.bandit.pruning_ratios) + 1e-9:
                    self.dense_failed.add(outcome.client_id)
            else:
                self.bandits.update(outcome.client_id, arm, reward)
            outcome.metrics.reward = reward
            outcome.metrics.reward_terms = dict(terms.get(outcome.client_id, {}))
            rewards.append(reward)
        return rewards

    def _reward_terms(self, outcomes: Sequence[ClientOutcome]) -> dict[int, dict[str, float]]:
        """Per successful client, the four terms of the multi-term reward (docs/bandit.md), each in [0, 1].

        ``loss`` and ``update`` are relative to the round's best client, so they compare devices that saw
        the same global model, and their scale does not drift as the loss falls over the rounds.
        """
        ok = [o for o in outcomes if o.assignment.arm is not None and not o.failed and o.sim_time_s > 0]
        sparsity = float(self.global_metrics()["sparsity"])
        target = self.ctx.config.pruning.target_sparsity
        gains = {o.client_id: _loss_gain(o) for o in ok}
        norms = {o.client_id: _update_norm(o) for o in ok}
        best_gain = max((g for g in gains.values() if math.isfinite(g)), default=0.0)
        best_norm = max(norms.values(), default=0.0)
        terms = {}
        for o in ok:
            gain = gains[o.client_id]  # nan (diverged) stays nan: multi_term_reward scores it a failure
            terms[o.client_id] = {
                "loss": gain / best_gain if best_gain > 0 else gain * 0.0,
                "pruning": pruning_progress(o.assignment.pruning_ratio, min(sparsity, 0.999), target),
                "update": norms[o.client_id] / best_norm if best_norm > 0 else 0.0,
                "time": timeliness(o.sim_time_s, self._reference_time(o, outcomes)),
            }
        return terms


def _loss_gain(outcome: ClientOutcome) -> float:
    """Relative local loss decrease of the round, ``(first - last) / first`` (``nan`` if it diverged)."""
    first, last = outcome.loss_first, outcome.loss_last
    if not (math.isfinite(first) and math.isfinite(last)):
        return math.nan
    return max(0.0, (first - last) / first) if first > 0 else 0.0


def _update_norm(outcome: ClientOutcome) -> float:
    """Frobenius norm of the device's LoRA update ``B A - B0 A0`` over all its modules.

    Computed in the sub-model's own coordinates (the device's start and end adapters share them), so it
    needs no index map; a bigger sub-model or rank that learns more moves its adapter further. The update
    is never formed: it is the thin product ``[B, -B0] [A; A0]``, whose squared norm is the trace of the
    product of the two small Gram matrices (:func:`_thin_product_sq_norm`). Forming ``out x in`` deltas for
    every module of every device was 13 % of an LLM server's round (py-spy, SmolLM2).
    """
    if outcome.factors is None:
        return 0.0
    total = 0.0
    start = outcome.assignment.factors
    with torch.no_grad():
        for name, (a, b) in outcome.factors.items():
            if name in start:
                a0, b0 = start[name]
                if b0.shape[0] == b.shape[0] and a0.shape[1] == a.shape[1]:
                    a, b = torch.cat([a, a0], 0), torch.cat([b, -b0], 1)
            total += _thin_product_sq_norm(b, a)
    return math.sqrt(total)


def _thin_product_sq_norm(b: torch.Tensor, a: torch.Tensor) -> float:
    """``||b @ a||_F^2`` for ``b`` [out, r], ``a`` [r, in] as ``trace((b^T b)(a a^T))``: O((out + in) r^2).

    Float64, so the value matches the formed product's to far below the reward's resolution.
    """
    b, a = b.double(), a.double()
    return float(((b.T @ b) * (a @ a.T)).sum())
