"""S-UCB: a smooth, progressively refined UCB over the continuous (pruning ratio, LoRA rank) space.

Why not a fixed grid: a grid learner must play every arm once before its index means anything, so
with 6 arms and 10 rounds most rounds are forced exploration and no device settles (measured, issue 9).
The reward of a device is a *smooth* function of (ratio, rank): pruning a little more makes the round
a little faster. S-UCB exploits that smoothness twice:

* **zooming** (HOO / zooming-bandit style, Bubeck et al. 2011; Kleinberg et al. 2008): the space is a
  tree of cells; the root is the whole space and a leaf splits in two once it has been played
  ``split_after`` (discounted) times, so the partition gets fine only where the learner plays, i.e.
  near the good region;
* **smoothing**: a cell's mean is a kernel-weighted average of *all* observations (Gaussian kernel on
  the distance to the cell's centre, bandwidth ``max(bandwidth, diameter / 2)``), so a cell never
  played borrows from its neighbours instead of needing a play of its own, and a discount ``gamma``
  per play lets old observations fade when a device's speed drifts.

The optimistic index of a leaf ``C`` is::

    N(C)     = sum_s gamma^(t-s) K(x_s, C) + n0                      (effective count)
    mean(C)  = (sum_s gamma^(t-s) K(x_s, C) y_s + n0 * mu0) / N(C)   (mu0: discounted mean of all y)
    index(C) = mean(C) + c * sqrt(log(max(e, n)) / N(C)) + L * diam(C)

``n0`` pseudo-observations at the overall mean keep the bonus of far-away cells finite (no forced
"play everything once"); ``L * diam`` is the Lipschitz term of HOO: a large cell may hide a better
point than its mean shows. Ratios are snapped to ``ratio_step`` and ranks to integers (a cell is an
index range over those allowed values and stops splitting at one value), so the server builds few
distinct sub-models per round. Ranks are spaced on a log2 scale (4 -> 8 is as big a step as 8 -> 16).

Deterministic given the seed (ties broken by a seeded RNG); ``state_dict`` / ``load_state_dict``
return / accept plain JSON-serialisable dicts. Formulas and defaults: ``docs/bandit.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedspine_ray.bandits.base import Arm, ArmCost
from fedspine_ray.bandits.ucb import PerDeviceLearners

__all__ = ["DeviceSUCB", "SmoothUCB", "allowed_ranks", "allowed_ratios"]


def allowed_ratios(low: float, high: float, step: float) -> list[float]:
    """Pruning ratios ``low, low + step, ..., high`` (``high`` always included), rounded to 1e-6."""
    if not 0 <= low <= high < 1:
        raise ValueError(f"pruning ratio range must satisfy 0 <= low <= high < 1, got [{low}, {high}]")
    if not step > 0:
        raise ValueError(f"ratio_step must be > 0, got {step}")
    count = int(math.floor((high - low) / step + 1e-9))
    values = [round(low + i * step, 6) for i in range(count + 1)]
    if values[-1] < round(high, 6):
        values.append(round(high, 6))
    return values


def allowed_ranks(low: int, high: int) -> list[int]:
    """Every integer LoRA rank in ``[low, high]``."""
    if not 1 <= low <= high:
        raise ValueError(f"LoRA rank range must satisfy 1 <= low <= high, got [{low}, {high}]")
    return list(range(int(low), int(high) + 1))


def _normalise(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    span = arr[-1] - arr[0]
    return (arr - arr[0]) / span if span > 0 else np.zeros_like(arr)


class SmoothUCB:
    """One device's S-UCB learner over ``ratios x ranks`` (both sorted allowed values); see module doc."""

    def __init__(
        self,
        ratios: Sequence[float],
        ranks: Sequence[int],
        *,
        gamma: float = 0.95,
        c: float = 0.1,
        lipschitz: float = 0.1,
        bandwidth: float = 0.1,
        split_after: float = 1.0,
        prior_count: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.ratios = [float(r) for r in ratios]
        self.ranks = [int(r) for r in ranks]
        if not self.ratios or not self.ranks:
            raise ValueError("SmoothUCB needs at least one allowed pruning ratio and one LoRA rank")
        if sorted(set(self.ratios)) != self.ratios or sorted(set(self.ranks)) != self.ranks:
            raise ValueError("SmoothUCB: allowed ratios and ranks must be sorted and distinct")
        checks = {
            "gamma": 0 < gamma <= 1,
            "c": c >= 0,
            "lipschitz": lipschitz >= 0,
            "bandwidth": bandwidth > 0,
            "split_after": split_after > 0,
            "prior_count": prior_count > 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"SmoothUCB: invalid {bad[0]} (gamma in (0, 1], c >= 0, lipschitz >= 0, bandwidth > 0, "
                "split_after > 0, prior_count > 0)"
            )
        self.gamma, self.c, self.lipschitz = float(gamma), float(c), float(lipschitz)
        self.bandwidth, self.split_after, self.prior_count = (
            float(bandwidth),
            float(split_after),
            float(prior_count),
        )
        self.seed = int(seed)
        self._rng = np.random.default_rng(seed)
        self._u = _normalise(self.ratios)
        self._v = _normalise([math.log2(r) for r in self.ranks])
        self.t = 0
        # cells: id -> [i0, i1, j0, j1, depth, count, is_leaf]; index ranges are half-open
        self.cells: dict[int, list[float]] = {0: [0, len(self.ratios), 0, len(self.ranks), 0, 0.0, 1]}
        self._next_id = 1
        # observations (u, v, reward, play index t)
        self.obs: list[tuple[float, float, float, int]] = []

    # ------------------------------------------------------------------ geometry
    @staticmethod
    def _extent(grid: np.ndarray, i0: int, i1: int) -> tuple[float, float]:
        lo = 0.0 if i0 == 0 else (grid[i0 - 1] + grid[i0]) / 2
        hi = 1.0 if i1 == len(grid) else (grid[i1 - 1] + grid[i1]) / 2
        return float(lo), float(hi)

    def _geometry(self, cell: list[float]) -> tuple[float, float, float, int, int]:
        """(centre u, centre v, diameter, played ratio index, played rank index) of a cell."""
        i0, i1, j0, j1 = (int(x) for x in cell[:4])
        ulo, uhi = self._extent(self._u, i0, i1)
        vlo, vhi = self._extent(self._v, j0, j1)
        cu, cv = (ulo + uhi) / 2, (vlo + vhi) / 2
        i = i0 + int(np.argmin(np.abs(self._u[i0:i1] - cu)))
        j = j0 + int(np.argmin(np.abs(self._v[j0:j1] - cv)))
        return cu, cv, math.hypot(uhi - ulo, vhi - vlo), i, j

    def leaves(self) -> list[int]:
        return [cid for cid, cell in self.cells.items() if cell[6]]

    def depth(self, cell_id: int) -> int:
        return int(self.cells[cell_id][4])

    def cell_of(self, ratio: float, rank: int) -> int:
        """Id of the leaf holding the allowed point nearest to ``(ratio, rank)``."""
        i = int(np.argmin(np.abs(np.asarray(self.ratios) - float(ratio))))
        j = int(np.argmin(np.abs(np.asarray(self.ranks) - int(rank))))
        for cid in self.leaves():
            i0, i1, j0, j1 = (int(x) for x in self.cells[cid][:4])
            if i0 <= i < i1 and j0 <= j < j1:
                return cid
        raise AssertionError("leaves do not cover the space")  # invariant of _split

    # ------------------------------------------------------------------ index
    def indices(self) -> dict[int, float]:
        """Optimistic index of every leaf (module docstring)."""
        if self.obs:
            obs = np.asarray(self.obs, dtype=float)
            disc = self.gamma ** (self.t - obs[:, 3])
            n_total = float(disc.sum())
            mu0 = float((disc * obs[:, 2]).sum() / n_total) if n_total > 0 else 0.5
        else:
            obs, disc, n_total, mu0 = np.zeros((0, 4)), np.zeros(0), 0.0, 0.5
        log_n = math.log(max(math.e, n_total))
        leaves = self.leaves()
        geo = np.array([self._geometry(self.cells[cid])[:3] for cid in leaves])  # (leaves, [cu, cv, diam])
        h = np.maximum(self.bandwidth, geo[:, 2] / 2)[:, None]
        dist2 = (obs[None, :, 0] - geo[:, :1]) ** 2 + (obs[None, :, 1] - geo[:, 1:2]) ** 2
        w = disc[None, :] * np.exp(-dist2 / (2 * h * h))
        count = w.sum(axis=1) + self.prior_count
        mean = (w @ obs[:, 2] + self.prior_count * mu0) / count
        index = mean + self.c * np.sqrt(log_n / count) + self.lipschitz * geo[:, 2]
        return {cid: float(v) for cid, v in zip(leaves, index, strict=True)}

    def select(
        self, cost: Callable[[float, int], float] | None = None, budget: float = math.inf
    ) -> tuple[float, int, int]:
        """``(pruning_ratio, lora_rank, leaf id)`` to play: the leaf with the largest index, at its snapped centre.

        With ``cost``, a leaf is played at its allowed point nearest the centre that costs at most
        ``budget``, and leaves without such a point do not compete; when no point anywhere fits, the
        cheapest point is played. FedSpine passes a device's predicted round time and the round's budget
        (fedspine_ray/rounds/time_model.py), so S-UCB refines only the part of the space that delays nobody.
        """
        idx = self.indices()
        points: dict[int, tuple[float, int]] = {}
        if cost is not None:
            for cid in idx:
                point = self._point_within(cid, cost, budget)
                if point is not None:
                    points[cid] = point
            if not points:
                grid = [(p, r) for p in self.ratios for r in self.ranks]
                ratio, rank = min(grid, key=lambda point: cost(*point))
                return ratio, rank, self.cell_of(ratio, rank)
            idx = {cid: idx[cid] for cid in points}
        best_value = max(idx.values())
        best = sorted(cid for cid, v in idx.items() if v >= best_value - 1e-12)
        cid = best[int(self._rng.integers(len(best)))] if len(best) > 1 else best[0]
        ratio, rank = points[cid] if cost is not None else self._centre(cid)
        return ratio, rank, cid

    def _point_within(
        self, cid: int, cost: Callable[[float, int], float], budget: float
    ) -> tuple[float, int] | None:
        """The leaf's allowed point nearest its centre with ``cost <= budget``, or None if it has none."""
        i0, i1, j0, j1 = (int(x) for x in self.cells[cid][:4])
        cu, cv, _, _, _ = self._geometry(self.cells[cid])
        candidates = sorted(
            ((i, j) for i in range(i0, i1) for j in range(j0, j1)),
            key=lambda ij: ((self._u[ij[0]] - cu) ** 2 + (self._v[ij[1]] - cv) ** 2, ij),
        )
        for i, j in candidates:
            if cost(self.ratios[i], self.ranks[j]) <= budget:
                return self.ratios[i], self.ranks[j]
        return None

    def _centre(self, cid: int) -> tuple[float, int]:
        """The allowed (ratio, rank) nearest a leaf's centre: the point the leaf is played at."""
        _, _, _, i, j = self._geometry(self.cells[cid])
        return self.ratios[i], self.ranks[j]

    # ------------------------------------------------------------------ feedback
    def update(self, ratio: float, rank: int, reward: float, cell: int | None = None) -> None:
        """Record ``reward`` for the played ``(ratio, rank)``; ``cell`` is the leaf id ``select`` returned.

        A stale ``cell`` (split meanwhile, or from another learner) falls back to the leaf holding the point.
        """
        if not math.isfinite(float(reward)):
            raise ValueError(f"reward must be finite, got {reward!r}")
        if cell is None or cell not in self.cells or not self.cells[cell][6]:
            cell = self.cell_of(ratio, rank)
        i = int(np.argmin(np.abs(np.asarray(self.ratios) - float(ratio))))
        j = int(np.argmin(np.abs(np.asarray(self.ranks) - int(rank))))
        self.t += 1
        self.obs.append((float(self._u[i]), float(self._v[j]), float(reward), self.t))
        # forget observations whose weight is negligible (bounded memory on long runs)
        if self.gamma < 1:
            horizon = math.log(1e-4) / math.log(self.gamma)
            self.obs = [o for o in self.obs if self.t - o[3] <= horizon]
        for c in self.cells.values():
            c[5] *= self.gamma
        self.cells[cell][5] += 1.0
        if self.cells[cell][5] >= self.split_after - 1e-12:
            self._split(cell)

    def _split(self, cid: int) -> None:
        """Halve a leaf along its wider (normalised) side that still holds >= 2 allowed values."""
        i0, i1, j0, j1, depth = (int(x) for x in self.cells[cid][:5])
        ulo, uhi = self._extent(self._u, i0, i1)
        vlo, vhi = self._extent(self._v, j0, j1)
        options = []
        if i1 - i0 >= 2:
            options.append((uhi - ulo, 0))
        if j1 - j0 >= 2:
            options.append((vhi - vlo, -1))  # ties go to the ratio dimension
        if not options:
            return  # at resolution
        _, dim = max(options)
        if dim == 0:
            k = i0 + (i1 - i0) // 2
            halves = [[i0, k, j0, j1], [k, i1, j0, j1]]
        else:
            k = j0 + (j1 - j0) // 2
            halves = [[i0, i1, j0, k], [i0, i1, k, j1]]
        self.cells[cid][6] = 0
        for h in halves:
            self.cells[self._next_id] = [*h, depth + 1, 0.0, 1]
            self._next_id += 1

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "type": "SmoothUCB",
            "ratios": list(self.ratios),
            "ranks": list(self.ranks),
            "params": {
                "gamma": self.gamma,
                "c": self.c,
                "lipschitz": self.lipschitz,
                "bandwidth": self.bandwidth,
                "split_after": self.split_after,
                "prior_count": self.prior_count,
            },
            "seed": self.seed,
            "t": self.t,
            "rng": self._rng.bit_generator.state,
            "cells": {str(k): list(v) for k, v in self.cells.items()},
            "next_id": self._next_id,
            "obs": [list(o) for o in self.obs],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (
            state.get("type") != "SmoothUCB"
            or list(state["ratios"]) != self.ratios
            or list(state["ranks"]) != self.ranks
        ):
            raise ValueError(
                "SmoothUCB.load_state_dict: the checkpoint's allowed ratios/ranks differ from this learner's; "
                "restore with the same bandit.pruning_ratios range, ranks range and ratio_step"
            )
        for key, value in state["params"].items():
            setattr(self, key, float(value))
        self.seed, self.t, self._next_id = int(state["seed"]), int(state["t"]), int(state["next_id"])
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]
        self.cells = {
            int(k): [int(v[0]), int(v[1]), int(v[2]), int(v[3]), int(v[4]), float(v[5]), int(v[6])]
            for k, v in state["cells"].items()
        }
        self.obs = [(float(o[0]), float(o[1]), float(o[2]), int(o[3])) for o in state["obs"]]


class DeviceSUCB(PerDeviceLearners):
    """One independent :class:`SmoothUCB` per device, seeded from ``SeedSequence([seed, d])``.

    Implements :class:`~fedspine_ray.bandits.base.DeviceLearners`; an :class:`Arm`'s ``key`` is the leaf
    cell played. Running out of memory is an ordinary (failure) reward here: the smoothing spreads it to
    the neighbouring larger arms by itself.
    """

    def __init__(
        self,
        ratios: Sequence[float],
        ranks: Sequence[int],
        num_devices: int,
        seed: int = 0,
        shared: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(lambda s: SmoothUCB(ratios, ranks, seed=s, **kw), num_devices, seed, shared)

    def select(self, device_id: int, cost: ArmCost | None = None, budget: float = math.inf) -> Arm:
        ratio, rank, cell = self._learner(device_id).select(cost, budget)
        return Arm(float(ratio), int(rank), int(cell))

    def update(self, device_id: int, arm: Arm, reward: float) -> None:
        self._learner(device_id).update(arm.ratio, arm.rank, reward, arm.key)

    def arm_of(self, device_id: int, ratio: float, rank: int) -> Arm:
        return Arm(float(ratio), int(rank), self._learner(device_id).cell_of(ratio, rank))

    def failed(self, device_id: int, arm: Arm, reward: float) -> None:
        self.update(device_id, arm, reward)

    def state_dict(self) -> dict[str, Any]:
        return {
            "algorithm": "s_ucb",
            "seed": self.seed,
            "learners": [lr.state_dict() for lr in self.learners],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load_learners(state["learners"])
