"""The round policies every method gets alike: the learned round-time model, the round's budget, and fill.

Before this module they lived in FedSpine, so only FedSpine's devices filled their idle time with extra
local steps, and a comparison against FedIT or HetLoRA measured that fill as FedSpine's speed (issue 22).
They belong to the round: whatever a method decides per device, the same three decisions follow from what
the devices were observed to do.

* **Round-time model** (``rounds.time_model``): each device's seconds per unit of compute and per byte
  each way, learned from its observed rounds (:class:`~.time_model.DeviceTimeModel`), predict what any
  (sub-model, rank) would take it.
* **Budget**: under ``wait_all`` a round lasts as long as its slowest device; no choice ends it earlier than
  that device's cheapest option (a method with fixed arms has one option per device: its own arm; FedSpine's
  cheapest arm is its largest ratio and smallest rank). ``(1 + rounds.time_slack)`` x the largest such time
  is the round's budget; under a deadline it never exceeds the deadline. FedSpine's bandit plays only arms
  predicted within it.
* **Fill** (``rounds.fill``): a device predicted to finish before the budget's end trains
  ``local_steps x (end - transfer) / compute`` steps instead (at most ``fill_max_factor`` times as many,
  never fewer), so the time it would have spent waiting trains the model. The slowest device keeps its steps,
  so rounds do not get longer.

Pure arithmetic on :class:`~.time_model.ArmWork`; the strategy says what each device's option and
assignment ask of it (strategies/lora.py ``arm_work``), the server's clock says what the round took.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fedspine_ray.config import RoundsConfig
from fedspine_ray.rounds.time_model import ArmWork, DeviceTimeModel, round_budget

__all__ = ["Fill", "RoundPolicy"]


@dataclass(frozen=True)
class Fill:
    """One device's filled round: its optimiser steps, and the work the time model is told it did."""

    steps: int
    work: ArmWork


class RoundPolicy:
    """The round-time model, the current round's budget, and fill (module docstring)."""

    def __init__(self, config: RoundsConfig) -> None:
        self.config = config
        self.time_model = DeviceTimeModel(config.time_gamma)
        #: This round's budget; ``inf`` while no selected device was observed (or the model is off).
        self.budget = math.inf

    def knows(self, device_id: int) -> bool:
        """Whether the device's speeds were observed (its round times can be predicted)."""
        return self.config.time_model and self.time_model.knows(device_id)

    def predict(self, device_id: int, work: ArmWork) -> float:
        """Predicted seconds of the device's round doing ``work``; ``nan`` for a device never observed."""
        return self.time_model.predict(device_id, work)

    def begin_round(self, device_ids: Iterable[int], cheapest: Callable[[int], ArmWork]) -> float:
        """Set (and return) the round's budget from each observed device's cheapest option ``cheapest(id)``."""
        self.budget = math.inf
        if not self.config.time_model:
            return self.budget
        fastest = [self.predict(cid, cheapest(cid)) for cid in device_ids if self.time_model.knows(cid)]
        budget = round_budget(fastest, self.config.time_slack)
        if self.config.end == "deadline" and self.config.deadline_s:
            budget = min(budget, float(self.config.deadline_s))
        self.budget = budget
        return budget

    def within_budget(self, device_id: int, work: ArmWork) -> bool:
        return self.predict(device_id, work) <= self.budget

    def fill(self, device_id: int, work: ArmWork, local_steps: int) -> Fill | None:
        """The device's filled round, or None when it keeps ``local_steps`` (nothing to gain, or unknown).

        The round ends at ``budget / (1 + time_slack)``: the slowest device's predicted time at its cheapest
        option. Under a deadline that caps the budget it is the deadline over ``1 + time_slack``, short of the
        deadline on purpose: a device that overruns a deadline loses its whole update, one that overruns
        ``wait_all``'s end only lengthens the round. The filled work scales compute with the steps, so the
        time model goes on measuring the device's speed, not the extra steps.
        """
        if not (self.config.fill and math.isfinite(self.budget)):
            return None
        compute_s, transfer_s = self.time_model.predict_phases(device_id, work)
        if not compute_s > 0:  # never observed (nan) or no compute to stretch
            return None
        end = self.budget / (1.0 + self.config.time_slack)
        factor = min(self.config.fill_max_factor, (end - transfer_s) / compute_s)
        steps = max(local_steps, math.floor(local_steps * factor))
        if steps <= local_steps:
            return None
        return Fill(steps, ArmWork(work.compute * steps / local_steps, work.bytes_down, work.bytes_up))

    def observe(
        self, device_id: int, work: ArmWork, compute_s: float, download_s: float, upload_s: float
    ) -> None:
        """Fold a finished round's measured phases into the device's speeds (when the model is on)."""
        if self.config.time_model:
            self.time_model.observe(device_id, work, compute_s, download_s, upload_s)
