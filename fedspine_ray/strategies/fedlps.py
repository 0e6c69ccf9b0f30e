"""A FedLPS-style sparsity bandit (Xue et al., arXiv 2412.07216): per-client P-UCBV over pruning ratios only.

FedLPS ("Learnable Personalized Sparsification", in "Learnable Sparse Customization in Heterogeneous Edge
Computing"; not the AAAI 2024 FedLPS of Jia et al., which has no bandit, docs/baselines.md) picks each
client's sparsity with a per-client bandit, P-UCBV (:mod:`fedspine_ray.bandits.pucbv`). It is the closest
published precedent of FedSpine's bandit, so this baseline keeps everything of FedSpine's loop but what
FedSpine adds to it:

* arms are pruning ratios only (the range of ``bandit.pruning_ratios``); every client trains at ``lora.rank``;
* no round-time model filters the arms (the round policies still apply, as to every method: budget, fill);
* the reward is FedLPS's utility gain per second of round time (:func:`fedlps_reward`), not FedSpine's.

The sub-model for a ratio, aggregation (FedSpine's default, ``flexlora``) and global pruning on FedSpine's
schedule are FedSpine's, so comparisons are at equal sparsity. FedLPS's learnable personalised masks are not
reproduced: the bandit is the part under comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedspine_ray.bandits import Arm, DevicePUCBV
from fedspine_ray.messages import ClientOutcome
from fedspine_ray.strategies.base import ServerContext
from fedspine_ray.strategies.fedspine import FedSpine
from fedspine_ray.strategies.lora import LoRAStrategy


def utility(accuracy: float) -> float:
    """FedLPS's sigmoid utility ``U(x) = 10 - 20 / (1 + exp(0.35 x))`` (the code feeds accuracy in [0, 1])."""
    return 10.0 - 20.0 / (1.0 + math.exp(0.35 * accuracy))


def soft_accuracy(mean_loss: float) -> float:
    """``exp(-mean cross-entropy)``: the geometric-mean probability of the right label (or answer token).

    Stands in for FedLPS's training accuracy (the mean over local epochs), which our clients do not report;
    like it, it rises as local training fits the client's data.
    """
    return math.exp(-mean_loss)


def fedlps_reward(accuracy: float, best_before: float, round_time_s: float) -> float:
    """``(U(acc_t) - U(max_{s<t} acc_s)) / round time``: utility gain per second, FedLPS's reward."""
    if not round_time_s > 0:
        raise ValueError(f"fedlps_reward: round time must be > 0, got {round_time_s}")
    return (utility(accuracy) - utility(best_before)) / round_time_s


class FedLPS(LoRAStrategy):
    """Per-client P-UCBV over pruning ratios at ``lora.rank``, pruning globally on FedSpine's schedule."""

    name = "fedlps"
    default_aggregation = FedSpine.default_aggregation
    prunes_globally = True

    def setup(self, ctx: ServerContext) -> None:
        cfg = ctx.config
        options = cfg.method.fedlps
        ratios = cfg.bandit.pruning_ratios
        per_round = cfg.clients.per_round() or cfg.clients.num_clients
        #: One P-UCBV per client over ``[min, max]`` of ``bandit.pruning_ratios``.
        self.bandits = DevicePUCBV(
            min(ratios),
            max(ratios),
            cfg.lora.rank,
            cfg.clients.num_clients,
            cfg.seed,
            arms=options.initial_arms,
            horizon=options.horizon or cfg.training.rounds / per_round,
            ratio_step=cfg.bandit.ratio_step,
        )
        #: Each client's (soft) training accuracy per round it trained, seeded ``[0]`` as FedLPS's acc_record.
        self.accuracy: dict[int, list[float]] = {}
        super().setup(ctx)

    def choose(self, rnd: int, client_id: int) -> tuple[float, int, int | None]:
        arm = self.bandits.select(client_id)
        return arm.ratio, arm.rank, arm.key

    def cheapest_option(self, rnd: int, client_id: int) -> tuple[float, int]:
        """The largest ratio of the range at ``lora.rank`` (what the round's budget is set from)."""
        return max(self.ctx.config.bandit.pruning_ratios), self.ctx.config.lora.rank

    def after_aggregation(self, rnd: int, outcomes: Sequence[ClientOutcome]) -> dict[str, float]:
        """Reward every client's interval; delete it on a failure or an accuracy drop (FedLPS's rules).

        A device that could not run its ratio (out of memory, crashed, rejected) loses that interval and
        records FedLPS's worst outcome, zero utility gain. Stragglers trained and are rewarded like the rest.
        """
        drop = self.ctx.config.method.fedlps.elimination_drop
        rewards = []
        for outcome in outcomes:
            assignment = outcome.assignment
            if assignment.arm is None:
                continue
            arm = Arm(assignment.pruning_ratio, assignment.rank, assignment.arm)
            if outcome.failed or not (math.isfinite(outcome.loss_mean) and outcome.sim_time_s > 0):
                self.bandits.failed(outcome.client_id, arm, 0.0)
                continue
            record = self.accuracy.setdefault(outcome.client_id, [0.0])
            accuracy = soft_accuracy(outcome.loss_mean)
            reward = fedlps_reward(accuracy, max(record), outcome.sim_time_s)
            record.append(accuracy)
            self.bandits.update(outcome.client_id, arm, reward)
            if drop is not None and record[-1] - record[-2] < -drop:
                self.bandits.eliminate(outcome.client_id, arm)
            outcome.metrics.reward = reward
            rewards.append(reward)
        return {"mean_reward": float(np.mean(rewards)) if rewards else math.nan}
