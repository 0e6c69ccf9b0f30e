"""Per-device round-time model, learned online: which arms a device can play without delaying the round.

FedSpine's bandit learns each device's (pruning ratio, LoRA rank) from observed outcomes, and its reward
weighs how late a device finished against the others. But an arm's completion time is not a black box:
a round is download + compute + upload, the server knows how many bytes it sends and receives for every
arm and how much compute each sub-model needs per token, and the only unknowns are the device's speeds.
One observed round therefore gives a device's seconds per byte (each way) and per unit of compute, and
from then on the time of *every* arm is predicted. Without this the grid bandit spends its first rounds
trying each arm once (forced exploration), and a phone trying the full model holds every device back
for that whole round (issue 9: 6 of 10 rounds were such exploration).

:class:`DeviceTimeModel` keeps exponentially discounted sums per device (speeds fluctuate and drift, as
in fedspine_ray/devices), :func:`round_budget` turns the predictions of one round's devices into the
round's unavoidable duration: the slowest device at its fastest arm. Arms predicted to finish within
that budget cost no round time, so the bandit explores and exploits only among them
(``rounds.time_model``, docs/rounds.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["ArmWork", "DeviceTimeModel", "round_budget"]


@dataclass(frozen=True)
class ArmWork:
    """What one arm asks of one device in a round, in units the server knows before the round.

    ``compute`` is any quantity proportional to the device's training time (the sub-model's Linear
    parameters: forward FLOPs per token are twice that); ``bytes_down`` / ``bytes_up`` what crosses the
    network (missing units or the whole sub-model, adapters, head).
    """

    compute: float
    bytes_down: float
    bytes_up: float


# index of each discounted sum in a device's state
_COMPUTE_S, _COMPUTE, _DOWN_S, _DOWN_B, _UP_S, _UP_B = range(6)


class DeviceTimeModel:
    """Seconds per unit of compute and per byte down / up, per device, from observed rounds.

    Each rate is a ratio of discounted sums (``sum gamma^age seconds / sum gamma^age work``), so a round
    that moved many bytes weighs more in the bandwidth estimate than one that moved a few adapters, and
    a device whose speed drifts is re-estimated within a few rounds. A phase without a measurement
    (``nan``: the wall clock measures no transfers) leaves that rate unknown, and it is predicted as 0.
    """

    def __init__(self, gamma: float = 0.7) -> None:
        if not 0 < gamma <= 1:
            raise ValueError(f"DeviceTimeModel: gamma must be in (0, 1], got {gamma}")
        self.gamma = float(gamma)
        self.sums: dict[int, list[float]] = {}

    def knows(self, device_id: int) -> bool:
        """True once a round of ``device_id`` with a measured compute time was observed."""
        sums = self.sums.get(int(device_id))
        return sums is not None and sums[_COMPUTE] > 0

    def observe(
        self, device_id: int, work: ArmWork, compute_s: float, download_s: float, upload_s: float
    ) -> None:
        """Fold one finished round of ``device_id`` (its work and its measured phase durations) in."""
        sums = self.sums.setdefault(int(device_id), [0.0] * 6)
        sums[:] = [s * self.gamma for s in sums]
        for seconds, amount, s_index, w_index in (
            (compute_s, work.compute, _COMPUTE_S, _COMPUTE),
            (download_s, work.bytes_down, _DOWN_S, _DOWN_B),
            (upload_s, work.bytes_up, _UP_S, _UP_B),
        ):
            if math.isfinite(seconds) and seconds >= 0 and amount > 0:
                sums[s_index] += float(seconds)
                sums[w_index] += float(amount)

    def rates(self, device_id: int) -> tuple[float, float, float]:
        """(seconds per compute unit, per byte down, per byte up); 0 where never measured."""
        sums = self.sums.get(int(device_id), [0.0] * 6)
        return tuple(  # type: ignore[return-value]
            sums[s] / sums[w] if sums[w] > 0 else 0.0
            for s, w in ((_COMPUTE_S, _COMPUTE), (_DOWN_S, _DOWN_B), (_UP_S, _UP_B))
        )

    def predict(self, device_id: int, work: ArmWork) -> float:
        """Predicted seconds of a round doing ``work`` (``nan`` for a device never observed)."""
        compute_s, transfer_s = self.predict_phases(device_id, work)
        return compute_s + transfer_s

    def predict_phases(self, device_id: int, work: ArmWork) -> tuple[float, float]:
        """Predicted ``(compute seconds, transfer seconds)`` of ``work``; ``nan`` for a device never observed.

        Split because only the compute part grows with the number of local steps (``rounds.fill``).
        """
        if not self.knows(device_id):
            return math.nan, math.nan
        compute, down, up = self.rates(device_id)
        return work.compute * compute, work.bytes_down * down + work.bytes_up * up

    def state_dict(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "sums": {str(k): list(v) for k, v in self.sums.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gamma = float(state["gamma"])
        self.sums = {int(k): [float(x) for x in v] for k, v in state["sums"].items()}


def round_budget(fastest_times: Iterable[float], slack: float) -> float:
    """The round's unavoidable duration, ``(1 + slack) x`` the largest of the devices' fastest-arm times.

    Under ``wait_all`` the round lasts as long as its slowest device; no choice of arms ends it before
    that device finishes its cheapest arm, so any other device's arm predicted to finish by then delays
    nobody. ``slack`` absorbs prediction error (device speeds fluctuate round to round). ``inf`` when no
    device could be predicted.
    """
    if slack < 0:
        raise ValueError(f"round_budget: slack must be >= 0, got {slack}")
    known = [t for t in fastest_times if math.isfinite(t)]
    return max(known) * (1.0 + slack) if known else math.inf
