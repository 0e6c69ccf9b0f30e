"""The simulated devices: their classes, per-round conditions, and what a task costs them.

Role: :mod:`.profiles` (device classes from YAML, their conditions in a round: pure functions of
``(seed, client, round)``), :mod:`.population` (which client plays which class, and the Ray resources of
its process), :mod:`.placement` (how many client processes a run starts: dedicated or pooled, pool sizes;
shared by the runtime and the sweep driver), :mod:`.cost` (the formulas: training FLOPs, memory, round
time, when a round ends) and :mod:`.workload` (what a client's task asks of its device: compute, bytes,
memory - the one place every caller computes them). The run's clock that uses them is
:mod:`fedspine_ray.rounds.clock`.
May import: config, modeling, pruning. Never Ray or the runtime; :mod:`.profiles`, :mod:`.population`,
:mod:`.placement` and :mod:`.cost` import no torch (the launcher reads the catalogue and sizes resources before Ray starts).
"""

from fedspine_ray.devices.profiles import (
    SIMULATION_MEMORY_SCALE,
    DeviceConditions,
    DeviceProfile,
    SlowdownEvent,
    assign_devices,
    conditions_at,
    load_device_profiles,
)

__all__ = [
    "SIMULATION_MEMORY_SCALE",
    "DeviceConditions",
    "DeviceProfile",
    "SlowdownEvent",
    "assign_devices",
    "conditions_at",
    "load_device_profiles",
]
