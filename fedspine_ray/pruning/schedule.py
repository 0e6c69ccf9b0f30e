"""Sparsity schedules: target global sparsity after pruning step ``step`` of ``total_steps``.

With ``t = clamp(step / total_steps, 0, 1)`` and ``s_f`` the target (``s_i`` the initial sparsity, 0 by
default):

* ``linear``:  ``s_i + (s_f - s_i) * t``
* ``cubic``:   ``s_f + (s_i - s_f) * (1 - t)^3``  (Zhu & Gupta, 2017: prune fast while the network is
  redundant, slowly near the target)
* ``constant`` / ``oneshot``: ``s_f`` at every step (all pruning happens at the first step)

All schedules are monotone non-decreasing in ``step`` (for ``s_f >= s_i``) and equal ``s_f`` at
``step >= total_steps``.
"""

from __future__ import annotations

from collections.abc import Callable


def _linear(t: float) -> float:
    return t


def _cubic(t: float) -> float:
    return 1.0 - (1.0 - t) ** 3


def _constant(t: float) -> float:
    return 1.0


SCHEDULES: dict[str, Callable[[float], float]] = {
    "linear": _linear,
    "cubic": _cubic,
    "constant": _constant,
    "oneshot": _constant,
}


def sparsity_schedule(kind: str, target: float, step: int, total_steps: int, initial: float = 0.0) -> float:
    """Target sparsity after ``step`` (0-based count of completed pruning steps) of ``total_steps``."""
    progress = 1.0 if total_steps <= 0 else step / total_steps
    return sparsity_at_progress(kind, target, progress, initial)


def sparsity_at_progress(kind: str, target: float, progress: float, initial: float = 0.0) -> float:
    """Target sparsity once a fraction ``progress`` of the pruning phase has passed (clamped to [0, 1]).

    The phase may be counted in rounds (:func:`sparsity_schedule`) or in simulated seconds
    (``training.max_sim_time_s``); the shape is the same.
    """
    try:
        shape = SCHEDULES[kind]
    except KeyError:
        raise ValueError(f"unknown sparsity schedule {kind!r}; known: {sorted(SCHEDULES)}") from None
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target}")
    t = min(max(progress, 0.0), 1.0)
    return initial + (target - initial) * shape(t)
