"""The one interface every per-device learner of (pruning ratio, LoRA rank) implements.

A strategy holds one :class:`DeviceLearners` for the whole population and asks it, per device and round,
for an :class:`Arm`; after the round it feeds back the arm's reward. Learners never see models, Ray or
the clock: the caller passes what an arm would cost (``cost(ratio, rank)``, e.g. predicted seconds) and the
round's ``budget``, and the learner chooses only among arms within it. That keeps the grid UCB family
(:mod:`.ucb`) and S-UCB (:mod:`.sucb`) interchangeable behind ``bandit.algorithm``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

#: Predicted cost of playing ``(ratio, rank)`` this round (seconds, or any monotone stand-in).
ArmCost = Callable[[float, int], float]


@dataclass(frozen=True)
class Arm:
    """One device's choice for a round: the pruning ratio and LoRA rank it trains at.

    ``key`` identifies the statistic the reward updates: the grid index for the UCB family, the S-UCB
    leaf cell that was played (a point can lie in a cell that has since been split).
    """

    ratio: float
    rank: int
    key: int


@runtime_checkable
class DeviceLearners(Protocol):
    """Per-device learners of a population (one shared learner when ``shared``)."""

    shared: bool

    def select(self, device_id: int, cost: ArmCost | None = None, budget: float = math.inf) -> Arm:
        """The arm ``device_id`` plays: the best by its index among arms with ``cost <= budget``.

        Without ``cost`` every arm competes. When no arm fits, the cheapest by ``cost`` is played (a
        device never observed gets ``budget=-inf`` and so its cheapest arm).
        """
        ...

    def update(self, device_id: int, arm: Arm, reward: float) -> None:
        """Feed back the reward of the arm the device played."""
        ...

    def arm_of(self, device_id: int, ratio: float, rank: int) -> Arm:
        """The arm playing (ratio, rank) is for this device's learner: what to update when the caller chose it."""
        ...

    def failed(self, device_id: int, arm: Arm, reward: float) -> None:
        """The device could not run ``arm`` (out of memory): record ``reward`` and what follows from it."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
