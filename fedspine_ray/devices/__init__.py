"""Heterogeneous device classes (profiles), client assignment and per-round conditions."""

from fedspine_ray.devices.profiles import (
    SIMULATION_MEMORY_SCALE,
    DeviceConditions,
    DeviceProfile,
    DeviceState,
    SlowdownEvent,
    assign_devices,
    conditions_at,
    load_device_profiles,
    local_custom_resources,
)

__all__ = [
    "SIMULATION_MEMORY_SCALE",
    "DeviceConditions",
    "DeviceProfile",
    "DeviceState",
    "SlowdownEvent",
    "assign_devices",
    "conditions_at",
    "load_device_profiles",
    "local_custom_resources",
]
