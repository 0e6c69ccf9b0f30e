"""What a device's round was worth to FedSpine's bandit: the reward functions, each in [0, 1].

Pure functions of measured facts (completion times, losses, sparsity, update norms); the strategy
computes the facts (strategies/fedspine.py) and the learners (this package) only see the number. The
terms and their default weights are named in :mod:`fedspine_ray.config.names`, which the config
validates against. Formulas and why: docs/bandit.md.
"""

from __future__ import annotations

import math

from fedspine_ray.config.names import DEFAULT_REWARD_WEIGHTS, REWARD_TERMS

__all__ = ["fedspine_reward", "multi_term_reward", "pruning_progress", "timeliness"]


def fedspine_reward(
    *,
    completion_time: float,
    reference_time: float,
    loss_before: float | None = None,
    loss_after: float | None = None,
    failed: bool = False,
    utility_weight: float = 0.3,
    idle_weight: float = 0.5,
    octaves: float = 6.0,
    failure_reward: float = -1.0,
) -> float:
    """Reward of one device-round, in ``[0, 1]`` for a successful round (``failure_reward`` on OOM).

    ``reward = w * progress + (1 - w) * timeliness`` where

    * ``progress = clip((loss_before - loss_after) / loss_before, 0, 1)``: training utility of the round;
    * ``timeliness = 1 - min(1, late / K) - idle_weight * min(1, early / K)`` with
      ``late = max(0, log2(t / t_ref))`` and ``early = max(0, log2(t_ref / t))`` measured in octaves and
      ``K = octaves``. A device slower than the round reference is charged for the waiting it causes; a
      device much faster sat idle and could have afforded a bigger sub-model / rank, at half the price.

    Log scale, not a ratio, because devices differ by 10-50x: on a linear scale every arm of a very slow
    device would look equally (maximally) late and the bandit could not tell that pruning more helps,
    whereas here halving the time always earns the same ``1/K``. The best arm for each device is the one
    that finishes close to ``t_ref`` while still making progress, which balances round times: slow
    devices prune harder / use lower ranks, fast devices take bigger sub-models. ``t_ref`` is chosen by
    the driver (the deadline under a deadline policy, else the round's median completion time). A failed
    round (OOM, crash, diverged loss) returns ``failure_reward``, far below any success, so the arm is
    avoided while the learner's forgetting still lets it be retried later.
    """
    if failed:
        return float(failure_reward)
    if not (completion_time > 0 and reference_time > 0):
        raise ValueError(
            f"fedspine_reward: completion_time and reference_time must be > 0, got "
            f"{completion_time!r}, {reference_time!r}"
        )
    if not 0 <= utility_weight <= 1:
        raise ValueError(f"utility_weight must be in [0, 1], got {utility_weight}")
    if octaves <= 0:
        raise ValueError(f"octaves must be > 0, got {octaves}")
    on_time = timeliness(completion_time, reference_time, idle_weight=idle_weight, octaves=octaves)
    if loss_before is None or loss_after is None:
        return on_time
    if not (math.isfinite(loss_before) and math.isfinite(loss_after)):
        return float(failure_reward)  # diverged training is a failed round
    progress = (loss_before - loss_after) / loss_before if loss_before > 0 else 0.0
    progress = min(1.0, max(0.0, progress))
    return utility_weight * progress + (1.0 - utility_weight) * on_time


def timeliness(
    completion_time: float, reference_time: float, *, idle_weight: float = 0.5, octaves: float = 6.0
) -> float:
    """``1 - min(1, late / K) - idle_weight * min(1, early / K)`` in octaves of ``t / t_ref`` (in [0, 1]).

    The time term of :func:`fedspine_reward` and of :func:`multi_term_reward`; see docs/bandit.md for why
    a log scale against the leave-one-out median.
    """
    if not (completion_time > 0 and reference_time > 0):
        raise ValueError(
            f"timeliness: completion_time and reference_time must be > 0, got {completion_time!r}, {reference_time!r}"
        )
    if octaves <= 0:
        raise ValueError(f"octaves must be > 0, got {octaves}")
    ratio = math.log2(completion_time / reference_time)
    late, early = max(0.0, ratio), max(0.0, -ratio)
    return max(0.0, 1.0 - min(1.0, late / octaves) - idle_weight * min(1.0, early / octaves))


def pruning_progress(ratio: float, global_sparsity: float, target_sparsity: float) -> float:
    """How far a sub-model pruned by ``ratio`` from the current global model gets toward the target.

    The sub-model's sparsity is ``1 - (1 - s_global)(1 - ratio)``; the term is that divided by
    ``target_sparsity``, capped at 1 (a sub-model at or past the target gets full credit, so the term
    never pushes past it). With no target (dense fine-tuning) every device gets 1: the term is neutral.
    """
    if not 0 <= ratio < 1 or not 0 <= global_sparsity < 1:
        raise ValueError(f"pruning_progress: ratio {ratio} and sparsity {global_sparsity} must be in [0, 1)")
    if target_sparsity <= 0:
        return 1.0
    sub_sparsity = 1.0 - (1.0 - global_sparsity) * (1.0 - ratio)
    return min(1.0, sub_sparsity / target_sparsity)


def multi_term_reward(
    terms: dict[str, float],
    weights: dict[str, float] | None = None,
    *,
    failed: bool = False,
    failure_reward: float = -1.0,
) -> float:
    """FedSpine's multi-term reward: ``sum_k w_k term_k / sum_k w_k`` over :data:`REWARD_TERMS`.

    ``terms`` holds each term in [0, 1] (clipped): ``loss`` (local loss improvement relative to the
    round's best), ``pruning`` (:func:`pruning_progress`), ``update`` (norm of the device's LoRA update
    relative to the round's largest) and ``time`` (:func:`timeliness`). A term missing from ``terms``
    is dropped and the remaining weights renormalised. A failed round returns ``failure_reward``.
    """
    if failed:
        return float(failure_reward)
    weights = DEFAULT_REWARD_WEIGHTS if weights is None else weights
    unknown = sorted(set(weights) - set(REWARD_TERMS))
    if unknown or any(w < 0 for w in weights.values()):
        raise ValueError(
            f"reward weights must be >= 0 and named from {list(REWARD_TERMS)}, got {dict(weights)}"
        )
    total = value = 0.0
    for name, term in terms.items():
        w = float(weights.get(name, 0.0))
        if w == 0.0:
            continue
        if not math.isfinite(term):
            return float(failure_reward)  # e.g. diverged loss: a failed round
        total += w
        value += w * min(1.0, max(0.0, float(term)))
    return value / total if total > 0 else 0.0
