"""Which device each client plays and what Ray resources its process asks for (no torch).

With ``devices.mix`` set, clients are drawn from the shipped (or user) device profiles; without a mix,
clients take ``clients.resources`` in turn. Torch-free, so the launching process (sweep placement groups)
can size a run's resources without loading models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedspine_ray.config import ExperimentConfig
from fedspine_ray.devices.profiles import DeviceProfile, assign_devices, load_device_profiles

MB = 1024 * 1024


@dataclass(frozen=True)
class ClientDevice:
    """The device a client actor simulates and the Ray resources the actor requests."""

    client_id: int
    device_class: str
    num_cpus: float
    memory_bytes: int
    torch_threads: int
    ray_resource: str | None = None
    profile: DeviceProfile | None = None

    def actor_options(self) -> dict[str, Any]:
        """Ray options of this client's actor: CPUs, memory and, for a device class, its custom resource."""
        if self.profile is not None:
            return self.profile.ray_actor_options()
        return {"num_cpus": self.num_cpus, "memory": self.memory_bytes}


def _profiles(config: ExperimentConfig) -> dict[str, DeviceProfile]:
    """The device classes of this run (checked before Ray started: launch/preflight.check_devices)."""
    return load_device_profiles(config.devices.profiles_path)


def build_client_devices(config: ExperimentConfig) -> list[ClientDevice]:
    """One :class:`ClientDevice` per client, deterministic in the config and seed."""
    n = config.clients.num_clients
    if config.devices.mix:
        profiles = _profiles(config)
        classes = assign_devices(config.devices.mix, n, config.seed)
        devices = []
        for cid, name in enumerate(classes):
            profile = profiles[name]
            devices.append(
                ClientDevice(
                    client_id=cid,
                    device_class=name,
                    num_cpus=profile.ray_num_cpus,
                    memory_bytes=int(profile.ray_memory_bytes),
                    torch_threads=max(1, math.floor(profile.ray_num_cpus)),
                    ray_resource=profile.ray_resource,
                    profile=profile,
                )
            )
        return devices
    specs = config.clients.resources
    return [
        ClientDevice(
            client_id=cid,
            device_class=f"cpu{specs[cid % len(specs)].num_cpus:g}",
            num_cpus=specs[cid % len(specs)].num_cpus,
            memory_bytes=specs[cid % len(specs)].memory_mb * MB,
            torch_threads=max(1, math.floor(specs[cid % len(specs)].num_cpus)),
        )
        for cid in range(n)
    ]
