"""Per-device online multi-armed bandits choosing (pruning ratio, LoRA rank) for FedSpine.

FedSpine (arXiv 2501.02438, Sec. on adaptive configuration) lets every device learn, with no prior
knowledge of its compute/communication capability, which (pruning ratio, LoRA rank) pair to use each
round: a bigger sub-model/rank learns more but a device that finishes late makes every other device
wait. Device speeds fluctuate and drift, so the arm means are *non-stationary*; we therefore provide
the two standard UCB variants for piecewise-stationary bandits (Garivier & Moulines, ALT 2011):

* ``discounted_ucb`` (D-UCB): statistics are exponentially discounted by ``gamma`` each play;
* ``sliding_window_ucb`` (SW-UCB): statistics over the last ``window`` plays only;
* ``ucb1``: D-UCB with ``gamma = 1`` (stationary baseline).

Exact formulas, the reward (:func:`fedspine_reward`) and parameter guidance: ``docs/bandit.md``.
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

__all__ = [
    "BANDITS",
    "ArmGrid",
    "Bandit",
    "DeviceBandits",
    "DiscountedUCB",
    "PerDeviceLearners",
    "SlidingWindowUCB",
    "DEFAULT_REWARD_WEIGHTS",
    "REWARD_TERMS",
    "fedspine_reward",
    "make_bandit",
    "multi_term_reward",
    "pruning_progress",
    "timeliness",
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
        round (fedspine_ray/cost_model.py); arms outside it are neither played nor force-explored.
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
_ALIASES = {
    "d-ucb": "discounted_ucb",
    "ducb": "discounted_ucb",
    "sw-ucb": "sliding_window_ucb",
    "swucb": "sliding_window_ucb",
}


def make_bandit(name: str, num_arms: int, seed: int = 0, **kw: Any) -> Bandit:
    """Instantiate a learner by registry name (``discounted_ucb``, ``sliding_window_ucb``, ``ucb1``)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in BANDITS:
        raise ValueError(f"unknown bandit algorithm {name!r}; choose one of {sorted(BANDITS)}")
    return BANDITS[key](num_arms, seed=seed, **kw)


class PerDeviceLearners:
    """One independent learner per device (FedSpine runs a separate bandit per device: capabilities
    differ, so pooling rewards across devices would average away exactly what must be learned).

    Learner ``d`` is built by ``make(seed_d)`` with ``seed_d`` drawn from ``SeedSequence([seed, d])``, so
    learners are independent yet the whole set is reproducible from ``seed``. Shared by the grid
    (:class:`DeviceBandits`) and continuous (``fedspine_ray.sucb.DeviceSUCB``) learners.
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


class DeviceBandits(PerDeviceLearners):
    """A grid learner (``algorithm`` from :data:`BANDITS`) per device, over ``arm_grid``'s arms."""

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
        self.last_arm: dict[int, int] = {}

    def select_index(self, device_id: int, allowed: np.ndarray | None = None) -> int:
        """Index of the arm ``device_id`` plays this round, among ``allowed`` arms if given."""
        arm = self._learner(device_id).select(allowed)
        self.last_arm[device_id] = arm
        return arm

    def select(self, device_id: int) -> tuple[float, int]:
        """Choose ``(pruning_ratio, lora_rank)`` for ``device_id`` this round."""
        return self.arm_grid[self.select_index(device_id)]

    def update(self, device_id: int, arm: int | tuple[float, int], reward: float) -> None:
        """Feed back the reward of the arm (index or ``(ratio, rank)``) the device played."""
        idx = arm if isinstance(arm, (int, np.integer)) else self.arm_grid.index(arm)
        self._learner(device_id).update(int(idx), reward)

    def out_of_memory(self, device_id: int, arm: int, reward: float) -> list[int]:
        """The device ran out of memory at ``arm``: presume the same ``reward`` for every arm that needs at
        least as much memory (pruning ratio no larger, rank no smaller) and was never played. Returns them.
        """
        ratio, rank = self.arm_grid[arm]
        learner = self._learner(device_id)
        larger = [
            i for i, (p, r) in enumerate(self.arm_grid.arms) if i != arm and p <= ratio + 1e-9 and r >= rank
        ]
        for i in larger:
            learner.presume(i, reward)
        return larger

    def state_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "seed": self.seed,
            "ratios": list(self.arm_grid.ratios),
            "ranks": list(self.arm_grid.ranks),
            "learners": [lr.state_dict() for lr in self.learners],
            "last_arm": {str(k): v for k, v in self.last_arm.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["ratios"]) != list(self.arm_grid.ratios) or list(state["ranks"]) != list(
            self.arm_grid.ranks
        ):
            raise ValueError(
                "DeviceBandits.load_state_dict: arm grid of the checkpoint differs from this one"
            )
        self._load_learners(state["learners"])
        self.last_arm = {int(k): int(v) for k, v in state.get("last_arm", {}).items()}


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


#: Terms of the multi-term reward, each in [0, 1] (docs/bandit.md, "Multi-term reward").
REWARD_TERMS = ("loss", "pruning", "update", "time")
#: Default weights: timeliness dominates because it is the only term measured to steer the bandit well
#: (issue 9); the three learning-side terms share the rest so that no single noisy one decides.
DEFAULT_REWARD_WEIGHTS = {"loss": 0.15, "pruning": 0.1, "update": 0.15, "time": 0.6}


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
