"""The cost formulas of a simulated device's round: training FLOPs, memory footprint, round time, round end.

The Ray actors really train (on CPU), but *how long a round would take on a Jetson Nano* is computed
analytically from the work done (FLOPs, bytes transferred) and the device's per-round conditions
(:mod:`fedspine_ray.devices`). This keeps experiments reproducible and independent of the host box,
and is the "completion time" the FedSpine bandit reward needs (arXiv 2501.02438: the MAB trades model
capacity against the waiting time a device causes). Formulas are documented in ``docs/devices.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from fedspine_ray.devices.profiles import DeviceConditions

__all__ = [
    "TRAIN_FLOPS_MULTIPLIER_FULL",
    "TRAIN_FLOPS_MULTIPLIER_LORA",
    "RoundOutcome",
    "RoundTime",
    "estimate_training_flops",
    "estimate_training_memory",
    "fits_in_memory",
    "forward_flops_per_token",
    "round_end_time",
    "simulated_round_time",
]

#: Full fine-tuning: forward (1x) + backward w.r.t. activations (1x) + backward w.r.t. weights (1x).
TRAIN_FLOPS_MULTIPLIER_FULL = 3.0
#: LoRA: the frozen base still needs the forward (1x) and the activation gradients (1x) to reach the
#: adapters of earlier layers, but no weight gradients for the frozen matrices (the LoRA weight
#: gradients are O(r/d) of that and are neglected). Hence ~2x forward.
TRAIN_FLOPS_MULTIPLIER_LORA = 2.0


def forward_flops_per_token(
    non_embedding_params: float, num_layers: int = 0, seq_len: int = 0, attention_width: int = 0
) -> float:
    """Forward FLOPs per token of a transformer: ``2 N + 2 L s d_attn`` (Kaplan et al. 2020, Table 1).

    ``2N`` counts one multiply-add per (non-embedding) weight; the second term is the ``QK^T`` and
    ``softmax @ V`` products, which matter for small models with long sequences.
    """
    if non_embedding_params < 0:
        raise ValueError(f"non_embedding_params must be >= 0, got {non_embedding_params}")
    return 2.0 * float(non_embedding_params) + 2.0 * num_layers * seq_len * attention_width


def estimate_training_flops(
    flops_per_token_forward: float, tokens: int, multiplier: float = TRAIN_FLOPS_MULTIPLIER_LORA
) -> float:
    """Training FLOPs for ``tokens`` tokens: ``multiplier x forward`` (2x for LoRA, 3x for full FT)."""
    if flops_per_token_forward < 0 or tokens < 0 or multiplier <= 0:
        raise ValueError(
            f"need flops_per_token_forward >= 0, tokens >= 0, multiplier > 0; got "
            f"{flops_per_token_forward}, {tokens}, {multiplier}"
        )
    return float(multiplier) * float(flops_per_token_forward) * float(tokens)


@dataclass(frozen=True)
class RoundTime:
    """Simulated durations (seconds) of one client's round: download, local compute, upload."""

    compute_s: float
    download_s: float
    upload_s: float
    total_s: float


def simulated_round_time(
    train_flops: float, bytes_down: float, bytes_up: float, conditions: DeviceConditions
) -> RoundTime:
    """``compute = flops / flops_per_s``; ``transfer = 8 * bytes / bps``; phases are sequential
    (download the sub-model/adapter, train, upload the adapter), so ``total`` is their sum."""
    if train_flops < 0 or bytes_down < 0 or bytes_up < 0:
        raise ValueError(f"work must be >= 0, got flops={train_flops}, down={bytes_down}, up={bytes_up}")
    compute = float(train_flops) / conditions.flops_per_s
    down = 8.0 * float(bytes_down) / conditions.downlink_bps
    up = 8.0 * float(bytes_up) / conditions.uplink_bps
    return RoundTime(compute_s=compute, download_s=down, upload_s=up, total_s=compute + down + up)


def estimate_training_memory(
    num_params: int,
    trainable_params: int,
    batch_size: int,
    seq_len: int,
    hidden_size: int,
    num_layers: int,
    intermediate_size: int,
    bytes_per_param: int = 4,
    *,
    num_heads: int | None = None,
    optimizer_bytes_per_trainable: int = 8,
    overhead_bytes: int = 0,
) -> int:
    """Peak training memory (bytes) of a (pruned) transformer fine-tuned with LoRA and AdamW.

    ``weights + grads + optimizer + activations + overhead`` with

    * weights   = ``num_params * bytes_per_param`` (frozen base + adapters),
    * grads     = ``trainable_params * bytes_per_param`` (only adapters/heads get weight gradients),
    * optimizer = ``trainable_params * 8`` (AdamW ``m`` and ``v`` kept in fp32),
    * activations saved for backward, per token and layer (elements):
      ``8 h + 2 i + 2 a s`` -- attention block input/QKV/context/output/LayerNorm (~6h), the FFN
      input and output (2h), the FFN pre- and post-activation (2i), and the softmax probabilities plus
      their dropout mask (2 a s) -- times ``batch * seq * layers * bytes_per_param``. This follows the
      per-layer accounting of Korthikanti et al. 2022 ("Reducing Activation Recomputation"), simplified.

    For a pruned sub-model pass the *pruned* ``intermediate_size`` and ``num_heads`` (the residual
    ``hidden_size`` is not pruned by head/FFN-neuron pruning). ``num_heads`` defaults to ``h // 64``.
    """
    for n, v in (
        ("num_params", num_params),
        ("trainable_params", trainable_params),
        ("batch_size", batch_size),
        ("seq_len", seq_len),
        ("hidden_size", hidden_size),
        ("num_layers", num_layers),
        ("intermediate_size", intermediate_size),
    ):
        if v < 0:
            raise ValueError(f"estimate_training_memory: {n} must be >= 0, got {v}")
    heads = max(1, hidden_size // 64) if num_heads is None else num_heads
    weights = num_params * bytes_per_param
    grads = trainable_params * bytes_per_param
    optimizer = trainable_params * optimizer_bytes_per_trainable
    per_token_layer = 8 * hidden_size + 2 * intermediate_size + 2 * heads * seq_len
    activations = batch_size * seq_len * num_layers * per_token_layer * bytes_per_param
    return int(weights + grads + optimizer + activations + overhead_bytes)


def fits_in_memory(required: float, conditions: DeviceConditions) -> bool:
    """True if ``required`` bytes fit in the round's available memory (else the round would OOM)."""
    return float(required) <= conditions.memory_bytes


@dataclass(frozen=True)
class RoundOutcome:
    """Who made it into a synchronous round and when it ended (simulated seconds from round start).

    ``participants`` are the clients whose updates are aggregated; ``stragglers`` missed the deadline
    (included in ``participants`` only if ``drop_stragglers=False``); ``failed`` never finished
    (time ``inf``/``nan``, e.g. OOM). ``idle_s[c] = end_time - t_c`` is how long an on-time client waited.
    """

    end_time: float
    participants: list[int]
    stragglers: list[int]
    failed: list[int]
    idle_s: dict[int, float] = field(default_factory=dict)


def round_end_time(
    times: Mapping[int, float] | Sequence[float],
    policy: Literal["wait_all", "deadline"] = "wait_all",
    deadline_s: float | None = None,
    drop_stragglers: bool = True,
) -> RoundOutcome:
    """End of a synchronous round under ``policy``.

    * ``wait_all``: the server waits for every finishing client: ``end = max t_i``.
    * ``deadline``: ``end = min(deadline, max t_i)``; clients with ``t_i > deadline`` are stragglers,
      dropped from aggregation unless ``drop_stragglers=False`` (then they are aggregated but the
      round still *ends* at the deadline, i.e. their updates are treated as arriving late/stale).
    Non-finite times mark failed clients (never aggregated).
    """
    items = list(times.items()) if isinstance(times, Mapping) else list(enumerate(times))
    failed = [c for c, t in items if not math.isfinite(float(t))]
    ok = [(c, float(t)) for c, t in items if math.isfinite(float(t))]
    if any(t < 0 for _, t in ok):
        raise ValueError("round_end_time: completion times must be >= 0")
    if policy == "wait_all":
        end = max((t for _, t in ok), default=0.0)
        on_time, late = [c for c, _ in ok], []
    elif policy == "deadline":
        if deadline_s is None or not deadline_s > 0:
            raise ValueError(f"policy='deadline' needs a positive deadline_s, got {deadline_s!r}")
        on_time = [c for c, t in ok if t <= deadline_s]
        late = [c for c, t in ok if t > deadline_s]
        end = min(float(deadline_s), max((t for _, t in ok), default=0.0))
    else:
        raise ValueError(f"unknown round policy {policy!r}; expected 'wait_all' or 'deadline'")
    tmap = dict(ok)
    idle = {c: end - tmap[c] for c in on_time}
    participants = on_time if drop_stragglers else on_time + late
    return RoundOutcome(end_time=end, participants=participants, stragglers=late, failed=failed, idle_s=idle)
