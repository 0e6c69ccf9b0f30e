"""What one client's task asks of its device: compute, memory and bytes - computed here and only here.

The server charges a dispatched task (:func:`task_cost`: FLOPs per token and training memory of the actual,
possibly pruned, base against the device's memory this round), the simulated-time budget predicts dense
FedIT's rounds with the same function (:mod:`fedspine_ray.rounds.budget`), and FedSpine's round-time model
predicts arms it has not built from the same parameter counts (:func:`adapter_bytes`, :func:`linear_params`).
Formulas: :mod:`.cost`; their derivation: docs/devices.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from fedspine_ray.config import ExperimentConfig
from fedspine_ray.devices.cost import estimate_training_memory, forward_flops_per_token
from fedspine_ray.devices.profiles import DeviceConditions, DeviceProfile, conditions_at
from fedspine_ray.modeling.adapters import is_lora_target
from fedspine_ray.pruning.architectures import UnsupportedArchitectureError, config_shapes, layer_specs
from fedspine_ray.pruning.stats import count_parameters

__all__ = [
    "TaskCost",
    "adapter_bytes",
    "linear_params",
    "lm_logits_bytes",
    "backward_reach",
    "lora_trainable_params",
    "model_shape_summary",
    "task_cost",
]


@dataclass(frozen=True)
class TaskCost:
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


def linear_params(model: nn.Module) -> int:
    """Weights of every Linear of ``model``: what its training FLOPs per token scale with (2 per weight)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def adapter_bytes(shapes: Mapping[str, tuple[int, int]], rank: int, element_bytes: int) -> int:
    """Bytes of rank-``rank`` LoRA factors on Linears of ``(out, in)`` ``shapes``: ``A [r, in]`` + ``B [out, r]``."""
    return int(rank * sum(out + in_ for out, in_ in shapes.values()) * element_bytes)


def model_shape_summary(model: nn.Module) -> dict[str, float]:
    """Sizes the cost model needs, read off the actual (possibly pruned, per-layer different) blocks.

    Per-layer widths come from the pruning engine's block specs (the one architecture table); a model it
    cannot prune (trained unpruned, e.g. FedIT on any PEFT-wrappable LM) is read from its config instead.
    """
    config = model.config
    try:
        specs = layer_specs(model)
    except UnsupportedArchitectureError:
        shapes = config_shapes(config)
        specs, layers = [], shapes.num_layers
        attention = [float(shapes.attention_width)] * layers
        heads = [float(shapes.num_attention_heads)] * layers
        # GPT-2-style configs leave the MLP width unset (n_inner: null) for its 4 x hidden default
        mlp = [float(shapes.intermediate_size or 4 * shapes.hidden_size)] * layers
        hidden = shapes.hidden_size
    else:
        attention = [float(s.n_units * s.heads_per_unit * s.head_dim) for s in specs]
        heads = [float(s.n_units * s.heads_per_unit) for s in specs]
        mlp = [float(s.n_channels) for s in specs]
        hidden, layers = config.hidden_size, config.num_hidden_layers
    return {
        "hidden_size": hidden,
        "num_layers": layers,
        "attention_width": float(np.mean(attention)) if attention else 0.0,
        "num_heads": float(np.mean(heads)) if heads else 0.0,
        "intermediate_size": float(np.mean(mlp)) if mlp else 0.0,
        "non_embedding_params": linear_params(model),
    }


def lora_trainable_params(
    model: nn.Module, targets: Sequence[str], rank: int, head_modules: Sequence[str]
) -> int:
    """Adapter parameters of rank ``rank`` on ``targets`` plus the fully trained head."""
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and is_lora_target(name, targets):
            count += rank * (module.in_features + module.out_features)
        if name in head_modules:
            count += sum(p.numel() for p in module.parameters())
    return count


def backward_reach(model: nn.Module, targets: Sequence[str]) -> tuple[float, int | None]:
    """How far a LoRA backward pass goes down: (share of the blocks' Linear weights it reaches, blocks reached).

    Gradients flow from the loss down to the lowest transformer block with an adapter; the blocks below need
    no backward pass and keep no activations for one. LoRA's training FLOPs are forward + backward, about 2x
    the forward pass, so with adapters on the top blocks only (LEGEND's LoRA depth, strategies/legend.py) they
    are ``(1 + share) / 2`` of that. ``(1.0, number of blocks)`` when the lowest block has an adapter (every
    other method), ``(1.0, None)`` when the pruning engine does not know the blocks or an adapter sits outside
    them (assume the whole model), ``(0.0, 0)`` without any adapter.
    """
    try:
        specs = layer_specs(model)
    except UnsupportedArchitectureError:
        return 1.0, None
    prefixes = [spec.prefix + "." for spec in specs]
    lowest: int | None = None
    for name, module in model.named_modules():
        if not (isinstance(module, nn.Linear) and is_lora_target(name, targets)):
            continue
        block = next((i for i, prefix in enumerate(prefixes) if name.startswith(prefix)), None)
        if block is None:
            return 1.0, None
        lowest = block if lowest is None else min(lowest, block)
    if lowest is None:
        return 0.0, 0
    weights = [linear_params(spec.block) for spec in specs]
    return sum(weights[lowest:]) / max(1, sum(weights)), len(specs) - lowest


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


def task_cost(
    config: ExperimentConfig,
    profile: DeviceProfile | None,
    client_id: int,
    memory_without_profile: int,
    base: nn.Module,
    rank: int,
    rnd: int,
    targets: Sequence[str],
    head_modules: Sequence[str],
) -> TaskCost:
    """FLOPs per token, trainable and total parameters of training ``base`` at ``rank``, and its memory
    against the device's memory in round ``rnd`` (no profile: the actor's memory, never exceeded).

    With adapters on the top blocks only (:func:`backward_reach`) the forward FLOPs per token are scaled by
    ``(1 + reach) / 2``, so that the LoRA training multiplier (2x forward) charges the backward pass only
    where it runs, and activations are kept for the blocks reached only; both are unchanged otherwise.
    """
    shape = model_shape_summary(base)
    seq_len = config.model.max_seq_len
    params = count_parameters(base)
    trainable = lora_trainable_params(base, targets, rank, head_modules)
    reach, reached_blocks = backward_reach(base, targets)
    flops = forward_flops_per_token(
        shape["non_embedding_params"], int(shape["num_layers"]), seq_len, int(shape["attention_width"])
    )
    if reach < 1.0:
        flops *= (1.0 + reach) / 2.0
    layers = int(shape["num_layers"]) if reached_blocks is None or reach >= 1.0 else reached_blocks
    if profile is None:
        return TaskCost(flops, 0, memory_without_profile, trainable, params + trainable, None)
    conditions = conditions_at(profile, client_id, rnd, config.seed)
    batch_size = config.training.batch_size
    required = estimate_training_memory(
        num_params=params + trainable,
        trainable_params=trainable,
        batch_size=batch_size,
        seq_len=seq_len,
        hidden_size=int(shape["hidden_size"]),
        num_layers=layers,
        intermediate_size=int(shape["intermediate_size"]),
        num_heads=max(1, round(shape["num_heads"])),
        overhead_bytes=lm_logits_bytes(base, batch_size, seq_len),
    )
    return TaskCost(flops, required, int(conditions.memory_bytes), trainable, params + trainable, conditions)
