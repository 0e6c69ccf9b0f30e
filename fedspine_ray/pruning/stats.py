"""Size, sparsity and FLOPs bookkeeping for (pruned) models.

Sparsity definition used throughout FedSpine-Ray: the fraction of the ORIGINAL *prunable parameters*
(weights and row-biases of the attention-unit and MLP-channel Linears of all blocks) that has been
removed.  Embeddings, norms, heads and the non-prunable hidden dimension never count.  Because every
unit of a layer owns the same number of parameters, removing a fraction ``p`` of the units of every
layer gives sparsity exactly ``p`` (up to rounding); protected layers lower it.

FLOPs per token (forward, multiply-add = 2 FLOPs)::

    2 * sum_{nn.Linear} in_features * out_features           # every Linear applied per token
  + sum_{blocks} 4 * seq_len * n_query_heads * head_dim        # QK^T scores + attention-weighted values

The attention term uses the full ``seq_len`` (bidirectional; an upper bound for causal models, whose
average context is ~seq_len/2).  Embedding lookups, norms, softmax and activations are ignored; heads
applied once per sequence (BERT pooler/classifier) are counted per token, a small overestimate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from .apply import original_shapes
from .architectures import (
    ROWS,
    LayerSpec,
    UnsupportedArchitectureError,
    get_linear,
    layer_specs,
    unwrap_linear,
)
from .plan import PruningPlan


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Real number of (unique) parameters; tied weights count once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _params_per_unit(spec: LayerSpec, attention: bool) -> int:
    total = 0
    for s in spec.attention if attention else spec.mlp:
        lin = get_linear(spec, s)
        other = lin.in_features if s.axis == ROWS else lin.out_features
        total += s.width * other + (s.width if (s.axis == ROWS and lin.bias is not None) else 0)
    return total


@dataclass
class PrunableUnits:
    """Per-layer unit counts (current and original) and parameters owned by one unit."""

    attention_units: list[int]
    mlp_channels: list[int]
    original_attention_units: list[int]
    original_mlp_channels: list[int]
    params_per_attention_unit: list[int]
    params_per_channel: list[int]

    @property
    def prunable_params(self) -> int:
        return sum(
            u * p for u, p in zip(self.attention_units, self.params_per_attention_unit, strict=True)
        ) + sum(c * p for c, p in zip(self.mlp_channels, self.params_per_channel, strict=True))

    @property
    def original_prunable_params(self) -> int:
        return sum(
            u * p for u, p in zip(self.original_attention_units, self.params_per_attention_unit, strict=True)
        ) + sum(c * p for c, p in zip(self.original_mlp_channels, self.params_per_channel, strict=True))

    @property
    def sparsity(self) -> float:
        """Fraction of the original prunable parameters removed (the project-wide definition); 0 for a model
        without prunable units (an architecture the engine cannot prune, trained unpruned)."""
        original = self.original_prunable_params
        return 1.0 - self.prunable_params / original if original else 0.0

    @property
    def unit_sparsity(self) -> float:
        """Fraction of original units (attention units + channels, unweighted) removed; informational."""
        cur = sum(self.attention_units) + sum(self.mlp_channels)
        return 1.0 - cur / (sum(self.original_attention_units) + sum(self.original_mlp_channels))


def prunable_units(model: nn.Module) -> PrunableUnits:
    """Count attention units / MLP channels of ``model`` and of its unpruned original.

    A model whose architecture the engine cannot prune has none (sparsity 0): unpruned methods (FedIT,
    HetLoRA, FlexLoRA) train any causal LM PEFT can wrap and still report the column; pruning it fails
    before Ray starts (launch/preflight.py) or at the first plan (one-line error).
    """
    try:
        specs = layer_specs(model)
    except UnsupportedArchitectureError:
        return PrunableUnits([], [], [], [], [], [])
    orig = original_shapes(model)
    return PrunableUnits(
        attention_units=[s.n_units for s in specs],
        mlp_channels=[s.n_channels for s in specs],
        original_attention_units=list(orig["attention_units"]),
        original_mlp_channels=list(orig["mlp_channels"]),
        params_per_attention_unit=[_params_per_unit(s, True) for s in specs],
        params_per_channel=[_params_per_unit(s, False) for s in specs],
    )


def sparsity(model: nn.Module) -> float:
    """Fraction of the original prunable parameters that ``model`` has lost (0 for a dense model)."""
    return prunable_units(model).sparsity


def predicted_parameter_count(model: nn.Module, plan: PruningPlan) -> int:
    """Parameter count ``model`` will have after ``apply_plan(model, plan)``, computed from the plan."""
    pu = prunable_units(model)
    removed = 0
    for i in range(len(pu.attention_units)):
        removed += (pu.attention_units[i] - len(plan.attention[i])) * pu.params_per_attention_unit[i]
        removed += (pu.mlp_channels[i] - len(plan.mlp[i])) * pu.params_per_channel[i]
    return count_parameters(model) - removed


def plan_sparsity(plan: PruningPlan, model: nn.Module) -> float:
    """Sparsity (vs. the original model) that applying ``plan`` to ``model`` would produce."""
    pu = prunable_units(model)
    kept = sum(len(plan.attention[i]) * p for i, p in enumerate(pu.params_per_attention_unit)) + sum(
        len(plan.mlp[i]) * p for i, p in enumerate(pu.params_per_channel)
    )
    return 1.0 - kept / pu.original_prunable_params


def ratio_for_sparsity(
    model: nn.Module,
    target: float,
    protected_layers: tuple[int, ...] | list[int] = (),
    prune_attention: bool = True,
) -> float:
    """Uniform per-layer ratio (vs. ORIGINAL sizes) over unprotected layers that reaches ``target``.

    Protected layers (and, with ``prune_attention=False``, all attention units) keep their parameters, so
    the rest must lose ``target * total / free``; the result is clipped to [0, 1].  Feed it to
    :func:`~fedspine_ray.pruning.plan.plan_for_original_ratio` with the same arguments. A layer whose
    attention is a single unit (multi-query attention) keeps it whatever ``prune_attention`` says, so
    for such a model the target is met by MLP channels alone.
    """
    pu = prunable_units(model)
    n = len(pu.attention_units)
    protected = {p % n for p in protected_layers}
    attention = [pu.original_attention_units[i] * pu.params_per_attention_unit[i] for i in range(n)]
    mlp = [pu.original_mlp_channels[i] * pu.params_per_channel[i] for i in range(n)]
    per_layer = [a + m for a, m in zip(attention, mlp, strict=True)]
    removable = [
        a + m if prune_attention and pu.original_attention_units[i] > 1 else m
        for i, (a, m) in enumerate(zip(attention, mlp, strict=True))
    ]
    free = sum(v for i, v in enumerate(removable) if i not in protected)
    if free == 0:
        return 0.0
    return min(1.0, max(0.0, target * sum(per_layer) / free))


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Forward FLOPs per token from the actual Linear shapes + attention matmuls (see module doc)."""
    linear = 0
    seen: set[int] = set()
    for _, m in model.named_modules():
        if isinstance(m, nn.Linear) and id(m) not in seen:
            seen.add(id(m))
            lin = unwrap_linear(m)
            linear += lin.in_features * lin.out_features
    attn = 0
    for s in layer_specs(model):
        attn += 4 * seq_len * s.n_units * s.heads_per_unit * s.head_dim
    return float(2 * linear + attn)


def shapes_summary(model: nn.Module) -> Mapping[str, object]:
    """Small dict for logs: params, sparsity, per-layer kept sizes."""
    pu = prunable_units(model)
    return {
        "params": count_parameters(model),
        "sparsity": pu.sparsity,
        "attention_units": pu.attention_units,
        "mlp_channels": pu.mlp_channels,
    }
