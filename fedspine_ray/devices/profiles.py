"""Heterogeneous device profiles and their per-round (non-stationary) conditions.

A :class:`DeviceProfile` describes one *class* of device (Jetson Nano, a phone, ...). Each simulated
client is assigned a class (:func:`assign_devices`) and, every round, draws its actual conditions
(:func:`conditions_at`): the nominal speed multiplied by a deterministic random fluctuation, a
per-round drift trend, an optional drift schedule of the class and optional per-client slowdown
events. Everything is a pure function of ``(seed, client_id, round)`` so that a run is exactly
reproducible whatever Ray does with actor placement and timing.

FedSpine (arXiv 2501.02438, Sec. 1 and the system model) motivates why this matters: the MAB must pick
pruning ratios and LoRA ranks *without prior knowledge* of device capabilities, which change over
time. The simulation therefore needs heterogeneity (classes), noise (fluctuation) and
non-stationarity (drift, schedules, slowdown events).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

__all__ = [
    "SIMULATION_MEMORY_SCALE",
    "DeviceConditions",
    "DeviceProfile",
    "SlowdownEvent",
    "assign_devices",
    "conditions_at",
    "load_device_profiles",
]

#: Shipped ``memory_bytes`` = physical memory usable for training x this factor. We fine-tune a ~22M
#: parameter MiniLM instead of a multi-billion parameter LLM; scaling memory down keeps the
#: "does this sub-model fit?" constraint binding, as it is for real LLMs on these devices.
SIMULATION_MEMORY_SCALE = 0.2

_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
# Ray accepts most strings as custom resource names, but a conservative identifier-like subset
# avoids any clash with Ray's own syntax (e.g. "node:<ip>", "accelerator_type:<x>").
_RAY_RESOURCE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_STREAM_COMPUTE, _STREAM_UP, _STREAM_DOWN, _STREAM_MEM = 1, 2, 3, 4


def _positive(name: str, field_name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"device profile {name!r}: field {field_name!r} must be a number, got {value!r}"
        ) from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(
            f"device profile {name!r}: field {field_name!r} must be a positive finite number, got {value!r}"
        )
    return v


@dataclass(frozen=True)
class DeviceProfile:
    """One device class. All numbers are validated at construction (``ValueError`` names the field).

    Attributes:
        name: class identifier (letters, digits, underscore).
        flops_per_s: effective *sustained* training throughput, FLOP/s (not the datasheet peak).
        memory_bytes: memory usable for training in the simulation (see ``SIMULATION_MEMORY_SCALE``).
        uplink_bps / downlink_bps: link bandwidth in bits per second.
        fluctuation: relative standard deviation of the per-round random variation (0 = deterministic).
        drift: per-round multiplicative trend of speed: the speed at round ``t`` is scaled by ``drift**t``
            (e.g. 0.99 = slowly degrading battery/thermal state). 1.0 = stationary.
        drift_schedule: step schedule ``((from_round, multiplier), ...)``: from ``from_round`` on, the
            speed is multiplied by ``multiplier`` (the last entry with ``from_round <= t`` wins).
        ray_num_cpus: fractional CPUs requested by one client actor of this class.
        ray_memory_bytes: Ray ``memory`` resource requested by one client actor (bytes); ``None`` (the
            shipped classes): derived from the run's model and training working set
            (:func:`fedspine_ray.devices.population.client_memory_request`), so Ray packs nodes by what a
            client process really holds.
        ray_num_gpus: GPUs requested by one client actor (fractions share a GPU, e.g. 0.25); a client
            given a GPU trains on CUDA. 0: CPU.
        ray_resource: custom Ray resource name used to pin the actor to nodes advertising this class.
        ray_resource_amount: amount of ``ray_resource`` one actor requests (a node advertising 1.0 unit
            hosts up to ``1 / amount`` clients of this class).
    """

    name: str
    flops_per_s: float
    memory_bytes: float
    uplink_bps: float
    downlink_bps: float
    fluctuation: float = 0.0
    drift: float = 1.0
    drift_schedule: tuple[tuple[int, float], ...] = ()
    ray_num_cpus: float = 0.1
    ray_memory_bytes: float | None = None
    ray_num_gpus: float = 0.0
    ray_resource: str = ""
    ray_resource_amount: float = 0.01
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(
                f"device profile field 'name' must be a non-empty identifier of letters, digits and '_', "
                f"got {self.name!r}"
            )
        for f in ("flops_per_s", "memory_bytes", "uplink_bps", "downlink_bps", "drift", "ray_num_cpus"):
            object.__setattr__(self, f, _positive(self.name, f, getattr(self, f)))
        object.__setattr__(
            self, "ray_resource_amount", _positive(self.name, "ray_resource_amount", self.ray_resource_amount)
        )
        if self.ray_memory_bytes is not None:
            object.__setattr__(
                self, "ray_memory_bytes", _positive(self.name, "ray_memory_bytes", self.ray_memory_bytes)
            )
        try:
            gpus = float(self.ray_num_gpus)
        except (TypeError, ValueError):
            gpus = float("nan")
        if not math.isfinite(gpus) or not 0 <= gpus <= 64:
            raise ValueError(
                f"device profile {self.name!r}: field 'ray_num_gpus' must be in [0, 64] (fractions share a GPU), "
                f"got {self.ray_num_gpus!r}"
            )
        object.__setattr__(self, "ray_num_gpus", gpus)
        try:
            fl = float(self.fluctuation)
        except (TypeError, ValueError):
            fl = float("nan")
        if not math.isfinite(fl) or fl < 0 or fl > 2:
            raise ValueError(
                f"device profile {self.name!r}: field 'fluctuation' must be a relative std in [0, 2], "
                f"got {self.fluctuation!r}"
            )
        object.__setattr__(self, "fluctuation", fl)
        sched: list[tuple[int, float]] = []
        for entry in self.drift_schedule:
            try:
                r, m = entry
                r_i, m_f = int(r), float(m)
            except (TypeError, ValueError):
                raise ValueError(
                    f"device profile {self.name!r}: field 'drift_schedule' entries must be "
                    f"(from_round, multiplier) pairs, got {entry!r}"
                ) from None
            if r_i < 0 or not math.isfinite(m_f) or m_f <= 0:
                raise ValueError(
                    f"device profile {self.name!r}: field 'drift_schedule' needs from_round >= 0 and "
                    f"multiplier > 0, got {entry!r}"
                )
            sched.append((r_i, m_f))
        object.__setattr__(self, "drift_schedule", tuple(sorted(sched)))
        res = self.ray_resource or f"fedspine_{self.name}"
        if not _RAY_RESOURCE_RE.match(res):
            raise ValueError(
                f"device profile {self.name!r}: field 'ray_resource' must match {_RAY_RESOURCE_RE.pattern}, "
                f"got {res!r}"
            )
        object.__setattr__(self, "ray_resource", res)

    def speed_multiplier(self, round_idx: int) -> float:
        """Deterministic (noise-free) speed factor at ``round_idx``: drift trend x schedule step."""
        step = 1.0
        for start, m in self.drift_schedule:  # sorted by start: the last active step wins
            if round_idx >= start:
                step = m
        return self.drift ** max(0, round_idx) * step

    def ray_actor_options(self, memory_bytes: int | None = None) -> dict[str, Any]:
        """Options for ``ActorClass.options(**...)`` placing one client actor of this class.

        ``memory_bytes`` is the derived request used when the profile sets no ``ray_memory_bytes``
        (``ClientDevice.actor_options`` passes it); without either, the options carry no memory request.
        """
        memory = self.ray_memory_bytes if self.ray_memory_bytes is not None else memory_bytes
        options: dict[str, Any] = {
            "num_cpus": self.ray_num_cpus,
            "resources": {self.ray_resource: self.ray_resource_amount},
        }
        if memory is not None:
            options["memory"] = int(memory)
        if self.ray_num_gpus > 0:
            options["num_gpus"] = self.ray_num_gpus
        return options

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> DeviceProfile:
        """Build from a YAML mapping. ``drift`` may be a float or a list of ``[from_round, multiplier]``."""
        if not isinstance(data, Mapping):
            raise ValueError(
                f"device profile {name!r} must be a mapping of fields, got {type(data).__name__}"
            )
        known = {
            "flops_per_s",
            "memory_bytes",
            "uplink_bps",
            "downlink_bps",
            "fluctuation",
            "drift",
            "drift_schedule",
            "ray_num_cpus",
            "ray_memory_bytes",
            "ray_num_gpus",
            "ray_resource",
            "ray_resource_amount",
        }
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k != "name"}
        missing = [
            k for k in ("flops_per_s", "memory_bytes", "uplink_bps", "downlink_bps") if k not in kwargs
        ]
        if missing:
            raise ValueError(f"device profile {name!r}: missing required field(s) {missing}")
        drift = kwargs.get("drift", 1.0)
        if isinstance(drift, (list, tuple)):
            kwargs["drift_schedule"] = tuple(tuple(e) if isinstance(e, (list, tuple)) else e for e in drift)
            kwargs["drift"] = 1.0
        elif drift is None:
            kwargs["drift"] = 1.0
        if "drift_schedule" in kwargs:
            kwargs["drift_schedule"] = tuple(
                tuple(e) if isinstance(e, (list, tuple)) else e for e in (kwargs["drift_schedule"] or ())
            )
        return cls(name=name, extra=extra, **kwargs)


def _read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"device profile file not found: {p}")
    with p.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping of device-class name -> fields, got {type(data).__name__}")
    return data


def _shipped_yaml() -> dict[str, Any]:
    text = resources.files("fedspine_ray.devices").joinpath("profiles.yaml").read_text()
    data = yaml.safe_load(text) or {}
    assert isinstance(data, dict)
    return data


def load_device_profiles(path: str | Path | None = None) -> dict[str, DeviceProfile]:
    """Load the shipped device classes, then merge a user YAML file over them.

    User entries with a new name add a class; entries with a shipped name are merged *field by field*
    over the shipped one (so ``jetson_nano: {fluctuation: 0.5}`` only changes that field). An entry set
    to ``null`` removes the class.
    """
    raw: dict[str, Any] = {k: dict(v) for k, v in _shipped_yaml().items()}
    if path is not None:
        for name, fields in _read_yaml(path).items():
            if fields is None:
                raw.pop(str(name), None)
                continue
            if not isinstance(fields, Mapping):
                raise ValueError(f"{path}: device class {name!r} must map to fields, got {fields!r}")
            merged = dict(raw.get(str(name), {}))
            merged.update(fields)
            if "drift" in fields and "drift_schedule" not in fields:
                merged.pop("drift_schedule", None)
            raw[str(name)] = merged
    return {name: DeviceProfile.from_dict(name, fields) for name, fields in raw.items()}


def assign_devices(
    mix: Mapping[str, float], num_clients: int, seed: int, known: Iterable[str] | None = None
) -> list[str]:
    """Assign a device class to each of ``num_clients`` clients, deterministically.

    Proportions are normalised and rounded with the largest-remainder method so the counts sum to
    exactly ``num_clients`` (ties broken by class name, so the result does not depend on dict order);
    the resulting list is then shuffled with ``seed`` so classes are not clustered by client id.
    """
    if num_clients < 0:
        raise ValueError(f"num_clients must be >= 0, got {num_clients}")
    if not mix:
        raise ValueError("device mix is empty: give at least one class with a positive weight")
    if known is not None:
        known_set = set(known)
        unknown = sorted(set(mix) - known_set)
        if unknown:
            raise ValueError(f"device mix names unknown class(es) {unknown}; known: {sorted(known_set)}")
    for name, w in mix.items():
        if not math.isfinite(float(w)) or float(w) < 0:
            raise ValueError(f"device mix weight for {name!r} must be a finite number >= 0, got {w!r}")
    total = sum(float(w) for w in mix.values())
    if total <= 0:
        raise ValueError("device mix weights sum to 0: give at least one positive weight")
    names = sorted(mix)
    exact = [float(mix[n]) / total * num_clients for n in names]
    counts = [math.floor(x) for x in exact]
    remaining = num_clients - sum(counts)
    order = sorted(range(len(names)), key=lambda i: (-(exact[i] - counts[i]), names[i]))
    for i in order[:remaining]:
        counts[i] += 1
    out = [n for n, c in zip(names, counts, strict=True) for _ in range(c)]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(out))
    return [out[i] for i in perm]


@dataclass(frozen=True)
class DeviceConditions:
    """Actual resources of one client in one round (after fluctuation, drift and events)."""

    flops_per_s: float
    uplink_bps: float
    downlink_bps: float
    memory_bytes: float


@dataclass(frozen=True)
class SlowdownEvent:
    """Per-client non-stationarity: from ``from_round`` (until ``until_round``, exclusive, if given)
    multiply this client's compute and/or network speed by ``multiplier``."""

    client_id: int
    from_round: int
    multiplier: float
    until_round: int | None = None
    compute: bool = True
    network: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.multiplier) and self.multiplier > 0):
            raise ValueError(f"SlowdownEvent field 'multiplier' must be > 0, got {self.multiplier!r}")

    def active(self, client_id: int, round_idx: int) -> bool:
        return (
            client_id == self.client_id
            and round_idx >= self.from_round
            and (self.until_round is None or round_idx < self.until_round)
        )


def _lognormal_factor(rng: np.random.Generator, rel_std: float) -> float:
    """Mean-1 lognormal with the given relative std (exact: sigma^2 = log(1 + cv^2))."""
    if rel_std <= 0:
        return 1.0
    sigma = math.sqrt(math.log1p(rel_std**2))
    return float(math.exp(sigma * rng.standard_normal() - 0.5 * sigma**2))


def conditions_at(
    profile: DeviceProfile,
    client_id: int,
    round: int,  # noqa: A002 - name requested by the API
    seed: int,
    events: Sequence[SlowdownEvent] | None = None,
) -> DeviceConditions:
    """Conditions of ``client_id`` (of class ``profile``) at round ``round``; pure in (seed, client, round).

    * speed (compute and both links) = nominal x ``profile.speed_multiplier(round)`` x independent
      mean-1 lognormal factors with relative std ``fluctuation`` (lognormal keeps speeds positive and
      models multiplicative slowdowns such as thermal throttling or radio fading);
    * memory = nominal x ``clip(1 - |z| * fluctuation / 2, 0.5, 1)``: other apps can only *take*
      memory away, never add it;
    * ``events`` apply per-client step changes (e.g. a device becomes 4x slower from round 20).
    """
    if client_id < 0 or round < 0:
        raise ValueError(f"client_id and round must be >= 0, got client_id={client_id}, round={round}")

    def rng(stream: int) -> np.random.Generator:
        return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(client_id), int(round), stream])

    mult = profile.speed_multiplier(round)
    fl = profile.fluctuation
    comp_mult, net_mult = mult, mult
    for ev in events or ():
        if ev.active(client_id, round):
            if ev.compute:
                comp_mult *= ev.multiplier
            if ev.network:
                net_mult *= ev.multiplier
    flops = profile.flops_per_s * comp_mult * _lognormal_factor(rng(_STREAM_COMPUTE), fl)
    up = profile.uplink_bps * net_mult * _lognormal_factor(rng(_STREAM_UP), fl)
    down = profile.downlink_bps * net_mult * _lognormal_factor(rng(_STREAM_DOWN), fl)
    z = abs(float(rng(_STREAM_MEM).standard_normal()))
    mem = profile.memory_bytes * min(1.0, max(0.5, 1.0 - z * fl / 2.0))
    return DeviceConditions(flops_per_s=flops, uplink_bps=up, downlink_bps=down, memory_bytes=mem)
