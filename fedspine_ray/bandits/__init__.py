"""Online learners that pick each device's (pruning ratio, LoRA rank) arm, and their rewards.

Role: FedSpine's per-device bandits (grid UCB family in :mod:`.ucb`, S-UCB over the continuous space in
:mod:`.sucb`) behind one interface (:class:`~.base.DeviceLearners`: ``select`` / ``update`` / ``failed``
with an :class:`~.base.Arm`), and the reward functions (:mod:`.reward`). :mod:`.pucbv` is FedLPS's P-UCBV
over pruning ratios only, the learner of the ``fedlps`` baseline (built by that strategy, not by
``bandit.algorithm``: it has no rank dimension and no round-time model).
May import: NumPy and :mod:`fedspine_ray.config`. Never torch, Ray, models or the runtime: a learner sees
numbers (rewards, predicted costs), so it can be tested and benchmarked in microseconds.
"""

from __future__ import annotations

from fedspine_ray.bandits.base import Arm, ArmCost, DeviceLearners
from fedspine_ray.bandits.pucbv import PUCBV, DevicePUCBV
from fedspine_ray.bandits.sucb import DeviceSUCB, allowed_ranks, allowed_ratios
from fedspine_ray.bandits.ucb import ArmGrid, GridBandits
from fedspine_ray.config.sections import BanditConfig

__all__ = [
    "PUCBV",
    "Arm",
    "ArmCost",
    "ArmGrid",
    "DeviceLearners",
    "DevicePUCBV",
    "DeviceSUCB",
    "GridBandits",
    "build_learners",
]


def build_learners(config: BanditConfig, num_devices: int, seed: int) -> DeviceLearners:
    """The learners ``bandit.algorithm`` names, one per device (or one shared), over the configured space.

    S-UCB searches the continuous range spanned by ``pruning_ratios`` x ``ranks`` (snapped to
    ``ratio_step`` and integer ranks); the grid learners play exactly the listed values.
    """
    if config.algorithm == "s_ucb":
        return DeviceSUCB(
            allowed_ratios(min(config.pruning_ratios), max(config.pruning_ratios), config.ratio_step),
            allowed_ranks(min(config.ranks), max(config.ranks)),
            num_devices,
            seed=seed,
            shared=config.shared,
            gamma=config.gamma,
            c=config.exploration,
            lipschitz=config.lipschitz,
            bandwidth=config.bandwidth,
            split_after=config.split_after,
        )
    options: dict[str, float] = {"c": config.exploration}
    if config.algorithm == "discounted_ucb":
        options["gamma"] = config.gamma
    if config.algorithm == "sliding_window_ucb":
        options["window"] = config.window
    grid = ArmGrid(config.pruning_ratios, config.ranks)
    return GridBandits(grid, num_devices, config.algorithm, seed=seed, shared=config.shared, **options)
