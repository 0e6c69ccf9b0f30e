"""Which device each client plays, what Ray resources its actor gets, and how long its round takes.

With ``devices.mix`` set, clients are drawn from the shipped (or user) device profiles; the simulated
clock charges each client the FLOPs of its actual (pruned) sub-model over its device's current throughput
plus its transfers over its bandwidth, and a task that does not fit the device's memory fails as an OOM.
Without a mix, clients take ``clients.resources`` in turn and every clock reads measured wall time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from fedspine_ray.clock import (
    estimate_training_flops,
    estimate_training_memory,
    forward_flops_per_token,
    round_end_time,
    simulated_round_time,
)
from fedspine_ray.config import ExperimentConfig, TrainingConfig
from fedspine_ray.devices import (
    DeviceConditions,
    DeviceProfile,
    assign_devices,
    conditions_at,
    load_device_profiles,
)
from fedspine_ray.strategies.base import ClientOutcome

MB = 1024 * 1024
#: Suffixes of the Linear layers whose widths give a block's attention width and MLP width.
ATTENTION_WIDTH_MODULES = ("attention.self.query", "self_attn.q_proj")
MLP_WIDTH_MODULES = ("intermediate.dense", "mlp.up_proj")


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


@dataclass(frozen=True)
class ClientCost:
    """Cost of one client's task known before it runs: model size, FLOPs and memory against the device."""

    flops_per_token: float
    memory_required: int
    memory_available: int
    trainable_params: int
    model_params: int
    conditions: DeviceConditions | None

    @property
    def fits(self) -> bool:
        return self.memory_required <= self.memory_available


def _profiles(config: ExperimentConfig) -> dict[str, DeviceProfile]:
    """The device classes of this run (already checked by ``DevicesConfig.validate``)."""
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


def model_shape_summary(model: nn.Module) -> dict[str, float]:
    """Sizes the cost model needs, read off the actual (possibly pruned, per-layer different) modules."""
    config = model.config
    attention, mlp, non_embedding = [], [], 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            non_embedding += module.weight.numel()
            if name.endswith(ATTENTION_WIDTH_MODULES):
                attention.append(module.out_features)
            elif name.endswith(MLP_WIDTH_MODULES):
                mlp.append(module.out_features)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layers = config.num_hidden_layers
    return {
        "hidden_size": config.hidden_size,
        "num_layers": layers,
        "attention_width": float(np.mean(attention)) if attention else 0.0,
        "num_heads": float(np.mean(attention)) / head_dim if attention else 0.0,
        "intermediate_size": float(np.mean(mlp)) if mlp else 0.0,
        "non_embedding_params": non_embedding,
    }


def lora_trainable_params(
    model: nn.Module, targets: Sequence[str], rank: int, head_modules: Sequence[str]
) -> int:
    """Adapter parameters of rank ``rank`` on ``targets`` plus the fully trained head."""
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            count += rank * (module.in_features + module.out_features)
        if name in head_modules:
            count += sum(p.numel() for p in module.parameters())
    return count


def lm_logits_bytes(model: nn.Module, batch_size: int, seq_len: int) -> int:
    """Training memory of a causal LM's vocabulary logits, absent from the per-layer activation model.

    ``[batch, seq, vocab]`` fp32 logits, their log-softmax and its gradient live at the same time during
    the loss's backward: for SmolLM2 (49k vocabulary) at batch 8 x seq 64 that is ~300 MB, as much as
    the 30 transformer blocks' activations. A classifier's logits are negligible (0 here).
    """
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Linear):
        return 0
    return 3 * batch_size * seq_len * head.out_features * 4


class DeviceTimer:
    """Per-client costs before a round and the round's duration after it, on the configured clock."""

    def __init__(self, config: ExperimentConfig, devices: Sequence[ClientDevice]) -> None:
        self.config = config
        self.devices = {d.client_id: d for d in devices}

    def estimate(
        self,
        device: ClientDevice,
        base: nn.Module,
        rank: int,
        rnd: int,
        training: TrainingConfig,
        targets: Sequence[str],
        head_modules: Sequence[str],
    ) -> ClientCost:
        shape = model_shape_summary(base)
        seq_len = self.config.model.max_seq_len
        params = sum(p.numel() for p in base.parameters())
        trainable = lora_trainable_params(base, targets, rank, head_modules)
        flops = forward_flops_per_token(
            shape["non_embedding_params"], int(shape["num_layers"]), seq_len, int(shape["attention_width"])
        )
        if device.profile is None:
            return ClientCost(flops, 0, device.memory_bytes, trainable, params + trainable, None)
        conditions = conditions_at(device.profile, device.client_id, rnd, self.config.seed)
        required = estimate_training_memory(
            num_params=params + trainable,
            trainable_params=trainable,
            batch_size=training.batch_size,
            seq_len=seq_len,
            hidden_size=int(shape["hidden_size"]),
            num_layers=int(shape["num_layers"]),
            intermediate_size=int(shape["intermediate_size"]),
            num_heads=max(1, round(shape["num_heads"])),
            overhead_bytes=lm_logits_bytes(base, training.batch_size, seq_len),
        )
        return ClientCost(
            flops, required, int(conditions.memory_bytes), trainable, params + trainable, conditions
        )

    def close_round(self, outcomes: Sequence[ClientOutcome]) -> float:
        """Give every outcome its completion time, mark stragglers, return the round's duration."""
        times: dict[int, float] = {}
        for outcome in outcomes:
            if outcome.status != "ok":
                continue
            conditions: DeviceConditions | None = outcome.extras.get("conditions")
            if self.config.runtime.clock == "wall" or conditions is None:
                outcome.sim_time_s = outcome.wall_time_s
                # Measured local training only: transfers go through Ray's object store and are not timed.
                outcome.extras.update(
                    sim_compute_s=outcome.wall_time_s, sim_download_s=math.nan, sim_upload_s=math.nan
                )
            else:
                train_flops = estimate_training_flops(
                    outcome.extras["flops_per_token"], int(outcome.extras.get("tokens_processed", 0))
                )
                timing = simulated_round_time(
                    train_flops, outcome.extras["bytes_down"], outcome.extras["bytes_up"], conditions
                )
                outcome.sim_time_s = timing.total_s
                outcome.extras["sim_compute_s"] = timing.compute_s
                outcome.extras["sim_transfer_s"] = timing.download_s + timing.upload_s
                outcome.extras["sim_download_s"] = timing.download_s
                outcome.extras["sim_upload_s"] = timing.upload_s
            times[outcome.client_id] = outcome.sim_time_s
        devices = self.config.devices
        result = round_end_time(
            times, devices.round_policy, devices.deadline_s, drop_stragglers=not devices.count_stragglers
        )
        for outcome in outcomes:
            if outcome.client_id in result.stragglers:
                outcome.extras["straggler"] = True
                if not devices.count_stragglers:
                    outcome.status = "straggler"
            if outcome.client_id in result.idle_s:
                outcome.extras["idle_s"] = result.idle_s[outcome.client_id]
                outcome.extras["sim_idle_s"] = result.idle_s[outcome.client_id]  # clients.parquet column
        return result.end_time
