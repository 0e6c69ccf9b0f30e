"""Per-device online multi-armed bandits choosing (pruning ratio, LoRA rank) for FedSpine.

FedSpine (arXiv 2501.02438, Sec. on adaptive configuration) lets every device learn, with no prior
knowledge of its compute/communication capability, which (pruning ratio, LoRA rank) pair to use each
round: a bigger sub-model/rank learns more but a device that finishes late makes every other device
wait. Device speeds fluctuate and drift, so the arm means are *non-stationary*; we therefore provide
the two standard UCB variants for piecewise-stationary bandits (Garivier & Moulines, ALT 2011):

* ``discounted_ucb`` (D-UCB): statistics are exponentially discounted by ``gamma`` each play;
* ``sliding_window_ucb`` (SW-UCB): statistics over the last ``window`` plays only;
* ``ucb1``: D-UCB with ``gamma = 1`` (stationary baseline).

Exact formulas and parameter guidance: ``docs/bandit.md``; the rewards are :mod:`.reward`.
All learners are deterministic given their seed (ties are broken by a seeded RNG) and checkpointable
(``state_dict`` / ``load_state_dict``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fedspine_ray.bandits.base import Arm, ArmCost

__all__ = [
    "BANDITS",
    "ArmGrid",
    "Bandit",
    "DiscountedUCB",
    "GridBandits",
    "PerDeviceLearners",
    "SlidingWindowUCB",
    "make_bandit",
]


@dataclass(frozen=True)
class ArmGrid:
    """Cartesian grid of arms ``(pruning_ratio, lora_rank)``, ratio-major order."""

    ratios: Sequence[float]
    ranks: Sequence[int]

    def __post_init__(self) -> None:
        ratios = tuple(float(r) for r in self.ratios)
        ranks = tuple(int(r) for r in self.ranks)
        if not ratios or not ranks:
            raise ValueError("ArmGrid needs at least one pruning ratio and one LoRA rank")
        if any(not 0.0 <= r < 1.0 for r in ratios):
            raise ValueError(f"ArmGrid: pruning ratios must be in [0, 1), got {ratios}")
        if any(r < 1 for r in ranks):
            raise ValueError(f"ArmGrid: LoRA ranks must be >= 1, got {ranks}")
        if len(set(ratios)) != len(ratios) or len(set(ranks)) != len(ranks):
            raise ValueError(f"ArmGrid: duplicate values in ratios={ratios} or ranks={ranks}")
        object.__setattr__(self, "ratios", ratios)
        object.__setattr__(self, "ranks", ranks)

    @property
    def arms(self) -> list[tuple[float, int]]:
        return [(p, r) for p in self.ratios for r in self.ranks]

    def __len__(self) -> int:
        return len(self.ratios) * len(self.ranks)

    def __getitem__(self, idx: int) -> tuple[float, int]:
        return self.arms[idx]

    def index(self, arm: tuple[float, int]) -> int:
        """Index of ``(ratio, rank)``; ``ValueError`` if it is not on the grid."""
        p, r = float(arm[0]), int(arm[1])
        for i, (pp, rr) in enumerate(self.arms):
            if rr == r and math.isclose(pp, p, abs_tol=1e-9):
                return i
        raise ValueError(f"arm {arm!r} is not on the grid ratios={self.ratios} ranks={self.ranks}")


@runtime_checkable
class Bandit(Protocol):
    """Protocol shared by all learners."""

    num_arms: int

    def select(self) -> int: ...

    def update(self, arm: int, reward: float) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class _UCBBase:
    def __init__(self, num_arms: int, c: float, seed: int) -> None:
        if num_arms < 1:
            raise ValueError(f"num_arms must be >= 1, got {num_arms}")
        if not c >= 0:
            raise ValueError(f"exploration coefficient c must be >= 0, got {c}")
        self.num_arms = int(num_arms)
        self.c = float(c)
        self.seed = int(seed)
        self._rng = np.random.default_rng(seed)
        self.t = 0  # number of updates so far
        #: arm -> reward inferred for an arm never played (see :meth:`presume`)
        self.presumed: dict[int, float] = {}

    def _stats(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(effective counts N_i, effective reward sums S_i, n = log argument)."""
        raise NotImplementedError

    def presume(self, arm: int, reward: float) -> None:
        """Score ``arm``, while it has never been played, as if it had been played once for ``reward``.

        For outcomes that follow from another arm's: a device that ran out of memory at one (ratio, rank)
        would also run out at every larger sub-model and rank, so spending forced-exploration rounds on
        them only repeats the failure. Once the arm is really played its own statistics take over.
        """
        self._check(arm, reward)
        self.presumed[int(arm)] = float(reward)

    def indices(self) -> np.ndarray:
        """UCB index ``S_i/N_i + c sqrt(log(n)/N_i)``; ``+inf`` for arms with ``N_i`` ~ 0 (unless presumed)."""
        counts, sums, n = self._stats()
        if self.presumed:
            counts, sums = counts.copy(), sums.copy()
            for arm, reward in self.presumed.items():
                if counts[arm] <= 1e-12:
                    counts[arm], sums[arm] = 1.0, reward
        idx = np.full(self.num_arms, np.inf)
        seen = counts > 1e-12
        logn = math.log(max(n, 1.0 + 1e-12))
        idx[seen] = sums[seen] / counts[seen] + self.c * np.sqrt(logn / counts[seen])
        return idx

    def select(self, allowed: np.ndarray | None = None) -> int:
        """Arm with the largest index; untried arms first (forced exploration); seeded tie-break.

        ``allowed`` (boolean per arm) restricts the choice, e.g. to the arms predicted not to delay the
        round (fedspine_ray/rounds/time_model.py); arms outside it are neither played nor force-explored.
        """
        idx = self.indices()
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=bool)
            if allowed.shape != (self.num_arms,) or not allowed.any():
                raise ValueError(
                    f"allowed must be a boolean mask over {self.num_arms} arms with a True entry"
                )
            idx = np.where(allowed, idx, -np.inf)
        best = (
            np.flatnonzero(idx >= idx.max() - 1e-12)
            if np.isfinite(idx.max())
            else np.flatnonzero(np.isposinf(idx))
        )
        return int(best[self._rng.integers(len(best))]) if len(best) > 1 else int(best[0])

    def _check(self, arm: int, reward: float) -> None:
        if not 0 <= int(arm) < self.num_arms:
            raise ValueError(f"arm index {arm} out of range [0, {self.num_arms})")
        if not math.isfinite(float(reward)):
            raise ValueError(f"reward must be finite, got {reward!r}")

    def _base_state(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "num_arms": self.num_arms,
            "c": self.c,
            "seed": self.seed,
            "t": self.t,
            "rng": self._rng.bit_generator.state,
            "presumed": {str(k): v for k, v in self.presumed.items()},
        }

    def _load_base(self, state: dict[str, Any]) -> None:
        if state.get("type") != type(self).__name__ or int(state["num_arms"]) != self.num_arms:
            raise ValueError(
                f"state_dict is for {state.get('type')} with {state.get('num_arms')} arms, "
                f"cannot load into {type(self).__name__} with {self.num_arms} arms"
            )
        self.c = float(state["c"])
        self.seed = int(state["seed"])
        self.t = int(state["t"])
        self.presumed = {int(k): float(v) for k, v in state.get("presumed", {}).items()}
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]


class DiscountedUCB(_UCBBase):
    """Discounted UCB (Garivier & Moulines 2011).

    After each play every arm's statistics are multiplied by ``gamma`` and the played arm gets
    ``+1`` count and ``+reward``: ``N_i = sum_s gamma^(t-s) 1[I_s=i]``,
    ``S_i = sum_s gamma^(t-s) X_s 1[I_s=i]``, ``n = sum_i N_i``, and the arm maximising
    ``S_i/N_i + c sqrt(log n / N_i)`` is played (``c`` = ``2B sqrt(xi)`` of the paper). Old
    observations fade, and an arm not played for a while regains exploration bonus, so a device whose
    speed changes is re-probed. ``gamma = 1`` is UCB1.
    """

    def __init__(self, num_arms: int, gamma: float = 0.95, c: float = 0.1, seed: int = 0) -> None:
        super().__init__(num_arms, c, seed)
        if not 0 < gamma <= 1:
            raise ValueError(f"DiscountedUCB: gamma must be in (0, 1], got {gamma}")
        self.gamma = float(gamma)
        self.counts = np.zeros(self.num_arms)
        self.sums = np.zeros(self.num_arms)

    def _stats(self) -> tuple[np.ndarray, np.ndarray, float]:
        return self.counts, self.sums, float(self.counts.sum())

    def update(self, arm: int, reward: float) -> None:
        self._check(arm, reward)
        self.counts *= self.gamma
        self.sums *= self.gamma
        self.counts[int(arm)] += 1.0
        self.sums[int(arm)] += float(reward)
        self.t += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            **self._base_state(),
            "gamma": self.gamma,
            "counts": self.counts.tolist(),
            "sums": self.sums.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load_base(state)
        self.gamma = float(state["gamma"])
        self.counts = np.asarray(state["counts"], dtype=float).copy()
        self.sums = np.asarray(state["sums"], dtype=float).copy()


class SlidingWindowUCB(_UCBBase):
    """Sliding-window UCB (Garivier & Moulines 2011).

    Only the last ``window`` plays count: ``N_i`` / ``S_i`` are the count / reward sum of arm ``i``
    among them and ``n = min(t, window)``; index ``S_i/N_i + c sqrt(log n / N_i)``. An arm that left
    the window is treated as untried, so it is re-explored: abrupt changes are forgotten after at
    most ``window`` rounds (D-UCB forgets gradually instead).
    """

    def __init__(self, num_arms: int, window: int = 50, c: float = 0.1, seed: int = 0) -> None:
        super().__init__(num_arms, c, seed)
        if window < 1:
            raise ValueError(f"SlidingWindowUCB: window must be >= 1, got {window}")
        self.window = int(window)
        self._history: deque[tuple[int, float]] = deque(maxlen=self.window)

    def _stats(self) -> tuple[np.ndarray, np.ndarray, float]:
        counts = np.zeros(self.num_arms)
        sums = np.zeros(self.num_arms)
        for a, r in self._history:
            counts[a] += 1.0
            sums[a] += r
        return counts, sums, float(len(self._history))

    def update(self, arm: int, reward: float) -> None:
        self._check(arm, reward)
        self._history.append((int(arm), float(reward)))
        self.t += 1

    def state_dict(self) -> dict[str, Any]:
        return {**self._base_state(), "window": self.window, "history": [list(h) for h in self._history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load_base(state)
        self.window = int(state["window"])
        self._history = deque(((int(a), float(r)) for a, r in state["history"]), maxlen=self.window)


def _ucb1(num_arms: int, c: float = 0.1, seed: int = 0) -> DiscountedUCB:
    return DiscountedUCB(num_arms, gamma=1.0, c=c, seed=seed)


#: name -> factory ``(num_arms, seed=..., **kw) -> Bandit``.
BANDITS: dict[str, Any] = {
    "discounted_ucb": DiscountedUCB,
    "sliding_window_ucb": SlidingWindowUCB,
    "ucb1": _ucb1,
}


def make_bandit(name: str, num_arms: int, seed: int = 0, **kw: Any) -> Bandit:
    """Instantiate a learner by registry name (``discounted_ucb``, ``sliding_window_ucb``, ``ucb1``)."""
    if name not in BANDITS:
        raise ValueError(f"unknown bandit algorithm {name!r}; choose one of {sorted(BANDITS)}")
    return BANDITS[name](num_arms, seed=seed, **kw)


class PerDeviceLearners:
    """One independent learner per device (FedSpine runs a separate bandit per device: capabilities
    differ, so pooling rewards across devices would average away exactly what must be learned).

    Learner ``d`` is built by ``make(seed_d)`` with ``seed_d`` drawn from ``SeedSequence([seed, d])``, so
    learners are independent yet the whole set is reproducible from ``seed``. Shared by the grid
    (:class:`GridBandits`) and continuous (``fedspine_ray.bandits.sucb.DeviceSUCB``) learners.
    """

    def __init__(self, make: Any, num_devices: int, seed: int, shared: bool = False) -> None:
        if num_devices < 1:
            raise ValueError(f"num_devices must be >= 1, got {num_devices}")
        self.seed = int(seed)
        self.num_devices = int(num_devices)
        #: One learner for all devices (``bandit.shared``): arms' learning value is pooled, while what is
        #: device-specific (time, memory) is handled by the caller's per-device ``allowed`` arms.
        self.shared = bool(shared)
        self.learners = [
            make(int(np.random.SeedSequence([self.seed, d]).generate_state(1)[0]))
            for d in range(1 if shared else num_devices)
        ]

    def __len__(self) -> int:
        return self.num_devices

    def _learner(self, device_id: int) -> Any:
        if not 0 <= device_id < self.num_devices:
            raise ValueError(f"device_id {device_id} out of range [0, {self.num_devices})")
        return self.learners[0 if self.shared else device_id]

    def _load_learners(self, states: Sequence[dict[str, Any]]) -> None:
        """Restore every device's learner from a checkpoint taken with the same number of devices."""
        if len(states) != len(self.learners):
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: checkpoint has {len(states)} devices, "
                f"this instance {len(self.learners)}"
            )
        for learner, state in zip(self.learners, states, strict=True):
            learner.load_state_dict(state)


class GridBandits(PerDeviceLearners):
    """A grid learner (``algorithm`` from :data:`BANDITS`) per device over ``arm_grid``'s arms.

    Implements :class:`~fedspine_ray.bandits.base.DeviceLearners`; an :class:`Arm`'s ``key`` is its grid
    index. A device that ran out of memory at an arm will also run out at every arm needing at least as
    much memory (no larger ratio, no smaller rank): its own learner presumes the failure reward for those
    arms while they are unplayed; a ``shared`` learner must not presume one device's failure for all, so
    those arms are blocked for that device only.
    """

    def __init__(
        self,
        arm_grid: ArmGrid,
        num_devices: int,
        algorithm: str = "discounted_ucb",
        seed: int = 0,
        shared: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(
            lambda s: make_bandit(algorithm, len(arm_grid), seed=s, **kw), num_devices, seed, shared
        )
        self.arm_grid = arm_grid
        self.algorithm = algorithm
        #: per device, grid arms it ran out of memory at or would (shared learner only)
        self.blocked: dict[int, set[int]] = {}

    def arm(self, index: int) -> Arm:
        ratio, rank = self.arm_grid[index]
        return Arm(ratio, rank, index)

    def arm_of(self, device_id: int, ratio: float, rank: int) -> Arm:
        return self.arm(self.arm_grid.index((ratio, rank)))

    def select(self, device_id: int, cost: ArmCost | None = None, budget: float = math.inf) -> Arm:
        allowed = None
        if cost is not None:
            costs = np.array([cost(p, r) for p, r in self.arm_grid.arms], dtype=float)
            allowed = costs <= budget
            if not allowed.any():
                allowed[int(np.nanargmin(np.where(np.isnan(costs), np.inf, costs)))] = True
        blocked = self.blocked.get(device_id)
        if blocked:
            keep = np.ones(len(self.arm_grid), dtype=bool) if allowed is None else allowed.copy()
            keep[sorted(blocked)] = False
            allowed = keep if keep.any() else allowed
        return self.arm(self._learner(device_id).select(allowed))

    def update(self, device_id: int, arm: Arm, reward: float) -> None:
        self._learner(device_id).update(int(arm.key), reward)

    def failed(self, device_id: int, arm: Arm, reward: float) -> None:
        self.update(device_id, arm, reward)
        larger = [
            i
            for i, (p, r) in enumerate(self.arm_grid.arms)
            if i != arm.key and p <= arm.ratio + 1e-9 and r >= arm.rank
        ]
        if self.shared:
            self.blocked.setdefault(device_id, set()).update([*larger, int(arm.key)])
            return
        learner = self._learner(device_id)
        for i in larger:
            learner.presume(i, reward)

    def state_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "seed": self.seed,
            "ratios": list(self.arm_grid.ratios),
            "ranks": list(self.arm_grid.ranks),
            "learners": [lr.state_dict() for lr in self.learners],
            "blocked": {str(k): sorted(v) for k, v in self.blocked.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["ratios"]) != list(self.arm_grid.ratios) or list(state["ranks"]) != list(
            self.arm_grid.ranks
        ):
            raise ValueError("GridBandits.load_state_dict: arm grid of the checkpoint differs from this one")
        self._load_learners(state["learners"])
        self.blocked = {int(k): set(v) for k, v in state.get("blocked", {}).items()}
