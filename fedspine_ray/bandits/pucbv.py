"""P-UCBV: FedLPS's per-client bandit over continuous sparsity intervals (Xue et al., arXiv 2412.07216).

The closest published precedent of FedSpine's bandit, and the learner of the ``fedlps`` baseline
(strategies/fedlps.py): it picks each client's pruning ratio only (no rank) and sees no round-time model.
Written from the authors' code (sunnyxuejj/FedLPS, ``Hetero_Client.P_UCBV`` and the ``FedLPS.py`` loop); the
facts and our readings are in docs/baselines.md.

The learner controls the keep ratio ``d = 1 - pruning ratio`` as the code does. Arms are intervals of ``d``,
initially ``arms`` equal ones of ``[1 - max ratio, 1 - min ratio]``, each with a reward list seeded ``[0]``
and a pull count seeded 1. One decision, with ``K`` arms and horizon ``T``:

* ``phi = T / K^2``; arm ``j``'s index is ``mean_j + sqrt((|var_j| + 2) ln(phi T eps) / (8 n_j))`` while
  ``ln(phi T eps) > 0``, else ``mean_j`` (population variance of its rewards, ``n_j`` its pulls);
* with probability ``explore`` (1 for the first two decisions, then ``1 / decisions``) a uniformly random
  arm, else the arm of largest index (the first on ties);
* the action is uniform in the chosen interval ``[l, r]``; the interval splits there into ``[l, a]`` (keeps
  its history and count) and the played arm ``[a, r]`` (a copy of the history, count + 1);
* ``eps`` halves.

A reward is appended to the arm holding the point played; :meth:`PUCBV.eliminate` deletes an arm (the code
does when the client's accuracy fell by more than 5 points). Played points are snapped to ``ratio_step`` on
the way out, so the server builds few distinct sub-models (as S-UCB does); the interval split is continuous.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedspine_ray.bandits.base import Arm, ArmCost
from fedspine_ray.bandits.ucb import PerDeviceLearners

__all__ = ["DevicePUCBV", "PUCBV"]


class PUCBV:
    """One client's P-UCBV over keep-ratio intervals (module docstring)."""

    def __init__(
        self, low_ratio: float, high_ratio: float, *, arms: int = 5, horizon: float = 10.0, seed: int = 0
    ) -> None:
        if not 0 <= low_ratio <= high_ratio < 1:
            raise ValueError(
                f"P-UCBV: pruning ratio range must satisfy 0 <= low <= high < 1, got [{low_ratio}, {high_ratio}]"
            )
        if arms < 1 or not horizon > 0:
            raise ValueError(f"P-UCBV: need arms >= 1 and horizon > 0, got {arms}, {horizon}")
        edges = np.linspace(1.0 - high_ratio, 1.0 - low_ratio, int(arms) + 1)
        #: Keep-ratio intervals ``[left, right]``, sorted and disjoint (deleted ones leave gaps).
        self.intervals: list[list[float]] = [[float(edges[i]), float(edges[i + 1])] for i in range(int(arms))]
        self.rewards: list[list[float]] = [[0.0] for _ in self.intervals]
        self.pulls: list[float] = [1.0] * len(self.intervals)
        #: Stable id per interval: an :class:`Arm`'s key (the played interval), clients.parquet's ``arm``.
        self.ids: list[int] = list(range(len(self.intervals)))
        self.next_id = len(self.intervals)
        self.horizon = float(horizon)
        self.eps = 1.0
        self.decisions = 0
        self.explore = 1.0
        self.seed = int(seed)
        self._rng = np.random.default_rng(seed)

    def scores(self) -> list[float]:
        """Every arm's index (module docstring)."""
        k = len(self.intervals)
        phi = self.horizon / k**2
        argument = phi * self.horizon * self.eps
        log_term = math.log(argument) if argument > 0 else -math.inf
        out = []
        for rewards, pulls in zip(self.rewards, self.pulls, strict=True):
            mean, var = float(np.mean(rewards)), float(np.var(rewards))
            bonus = math.sqrt(0.5 * (abs(var) + 2.0) * log_term / (4.0 * pulls)) if log_term > 0 else 0.0
            out.append(mean + bonus)
        return out

    def select(self) -> tuple[float, int]:
        """Play: ``(keep ratio, id of the played interval)``; splits the chosen interval at the point."""
        scores = self.scores()
        if self._rng.random() < self.explore:
            index = int(self._rng.integers(len(self.intervals)))
        else:
            index = int(np.argmax(scores))
        left, right = self.intervals[index]
        action = float(self._rng.uniform(left, right))
        self.intervals[index] = [left, action]
        self.intervals.insert(index + 1, [action, right])
        self.rewards.insert(index + 1, list(self.rewards[index]))
        self.pulls.insert(index + 1, self.pulls[index] + 1.0)
        played = self.next_id
        self.ids.insert(index + 1, played)
        self.next_id += 1
        self.eps /= 2.0
        self.decisions += 1
        self.explore = 1.0 / self.decisions
        return action, played

    def interval_of(self, keep: float) -> int:
        """Id of the interval holding keep ratio ``keep`` (the nearest one when it fell in a deleted gap)."""
        distances = [
            0.0 if left <= keep <= right else min(abs(keep - left), abs(keep - right))
            for left, right in self.intervals
        ]
        return self.ids[int(np.argmin(distances))]

    def _position(self, arm_id: int) -> int | None:
        return self.ids.index(arm_id) if arm_id in self.ids else None

    def update(self, arm_id: int, reward: float) -> None:
        """Append ``reward`` to the interval played (ignored if it was deleted meanwhile)."""
        position = self._position(arm_id)
        if position is not None:
            self.rewards[position].append(float(reward))

    def eliminate(self, arm_id: int) -> None:
        """Delete the interval (kept when it is the last one: a client always has an arm to play)."""
        position = self._position(arm_id)
        if position is not None and len(self.intervals) > 1:
            for values in (self.intervals, self.rewards, self.pulls, self.ids):
                del values[position]

    def state_dict(self) -> dict[str, Any]:
        return {
            "type": "PUCBV",
            "intervals": [list(i) for i in self.intervals],
            "rewards": [list(r) for r in self.rewards],
            "pulls": list(self.pulls),
            "ids": list(self.ids),
            "next_id": self.next_id,
            "horizon": self.horizon,
            "eps": self.eps,
            "decisions": self.decisions,
            "explore": self.explore,
            "seed": self.seed,
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("type") != "PUCBV":
            raise ValueError("PUCBV.load_state_dict: not a P-UCBV learner's state")
        self.intervals = [[float(x) for x in i] for i in state["intervals"]]
        self.rewards = [[float(x) for x in r] for r in state["rewards"]]
        self.pulls = [float(x) for x in state["pulls"]]
        self.ids = [int(x) for x in state["ids"]]
        self.next_id, self.decisions, self.seed = (
            int(state["next_id"]),
            int(state["decisions"]),
            int(state["seed"]),
        )
        self.horizon, self.eps, self.explore = (
            float(state["horizon"]),
            float(state["eps"]),
            float(state["explore"]),
        )
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]


class DevicePUCBV(PerDeviceLearners):
    """One :class:`PUCBV` per client over pruning ratios, at one fixed LoRA ``rank``.

    Implements :class:`~fedspine_ray.bandits.base.DeviceLearners`. ``cost`` and ``budget`` are ignored: FedLPS
    has no round-time model, which is what the baseline isolates. An :class:`Arm`'s ratio is the played keep
    ratio's complement snapped to ``ratio_step`` within the range; its key is the played interval's id.
    Running out of memory deletes the interval (the client cannot train that much of the model).
    """

    def __init__(
        self,
        low_ratio: float,
        high_ratio: float,
        rank: int,
        num_devices: int,
        seed: int = 0,
        *,
        arms: int = 5,
        horizon: float = 10.0,
        ratio_step: float | None = None,
    ) -> None:
        self.low, self.high, self.rank = float(low_ratio), float(high_ratio), int(rank)
        self.ratio_step = ratio_step
        super().__init__(
            lambda s: PUCBV(low_ratio, high_ratio, arms=arms, horizon=horizon, seed=s), num_devices, seed
        )

    def _snap(self, ratio: float) -> float:
        if not self.ratio_step:
            return round(min(self.high, max(self.low, ratio)), 6)
        steps = round((ratio - self.low) / self.ratio_step)
        return round(min(self.high, max(self.low, self.low + steps * self.ratio_step)), 6)

    def select(self, device_id: int, cost: ArmCost | None = None, budget: float = math.inf) -> Arm:
        keep, played = self._learner(device_id).select()
        return Arm(self._snap(1.0 - keep), self.rank, played)

    def update(self, device_id: int, arm: Arm, reward: float) -> None:
        self._learner(device_id).update(arm.key, reward)

    def arm_of(self, device_id: int, ratio: float, rank: int) -> Arm:
        """The arm a caller-chosen ``ratio`` counts as: the interval holding its keep ratio (rank is fixed)."""
        return Arm(self._snap(ratio), self.rank, self._learner(device_id).interval_of(1.0 - ratio))

    def eliminate(self, device_id: int, arm: Arm) -> None:
        """Delete the interval ``arm`` was played from (FedLPS's accuracy-drop rule)."""
        self._learner(device_id).eliminate(arm.key)

    def failed(self, device_id: int, arm: Arm, reward: float) -> None:
        self.update(device_id, arm, reward)
        self.eliminate(device_id, arm)

    def state_dict(self) -> dict[str, Any]:
        return {
            "algorithm": "p_ucbv",
            "seed": self.seed,
            "learners": [lr.state_dict() for lr in self.learners],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load_learners(state["learners"])
