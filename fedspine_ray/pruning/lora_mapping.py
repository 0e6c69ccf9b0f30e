"""LoRA coordinate mapping between a sub-model and the global model.

Convention: a LoRA factor pair ``(A, B)`` with ``A: [r, in]`` and ``B: [out, r]`` represents the weight
delta ``dW = B @ A`` with the PEFT scaling (``lora_alpha / r``) already folded into ``B``.

A sub-model produced by :func:`~fedspine_ray.pruning.apply.extract_submodel` keeps a subset of the
global rows (q/k/v, gate/up, intermediate.dense) or columns (o_proj, down_proj, output.dense) of each
prunable Linear.  Scattering ``A`` columns / ``B`` rows into zeros of the global shape gives a global
delta that equals the sub-model delta on kept coordinates and is zero elsewhere, so clients with
different widths can be aggregated in one coordinate system and merged into the global weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .architectures import ROWS, _plain_root, get_linear, layer_specs, unwrap_linear
from .plan import PruningPlan

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]
IndexMap = dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]


def linear_index_map(model: nn.Module, plan: PruningPlan, validate: bool = True) -> IndexMap:
    """For each prunable Linear of ``model``: (kept output rows, kept input columns) under ``plan``.

    Keys are plain HF module names of ``model`` (e.g. ``model.layers.1.self_attn.q_proj``).  The axis
    that pruning acts on always gets an index tensor (possibly all indices); the other axis is ``None``.
    ``validate=False`` allows a plan in another coordinate system with the same block structure (e.g.
    the original, unpruned model's), since only module names and unit widths are read from ``model``;
    the unit counts of that system, which place the parts of a fused Linear (Phi-3 ``qkv_proj``: q, k
    and v rows of the kept KV groups; ``gate_up_proj``: gate and up rows of the kept channels), are then
    taken from ``plan.base_units`` / ``plan.base_channels`` (``model``'s own counts where missing).
    """
    if validate:
        plan.validate(model)
    out: IndexMap = {}
    for spec in layer_specs(model):
        i = spec.index
        n_units, n_channels = spec.n_units, spec.n_channels
        if not validate:
            n_units = int(plan.base_units.get(i, n_units))
            n_channels = int(plan.base_channels.get(i, n_channels))
        for slices, kept, n in (
            (spec.attention, plan.attention[i], n_units),
            (spec.mlp, plan.mlp[i], n_channels),
        ):
            units = torch.tensor(kept, dtype=torch.long)
            for s in slices:
                idx = s.indices(units, n)
                out[f"{spec.prefix}.{s.name}"] = (idx, None) if s.axis == ROWS else (None, idx)
    return out


def prunable_linear_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{name: (out_features, in_features)}`` of the prunable Linears of ``model`` (plain names)."""
    shapes: dict[str, tuple[int, int]] = {}
    for spec in layer_specs(model):
        for s in spec.attention + spec.mlp:
            lin = get_linear(spec, s)
            shapes[f"{spec.prefix}.{s.name}"] = (lin.out_features, lin.in_features)
    return shapes


def lora_to_global(
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    index_map: Mapping[str, tuple[torch.Tensor | None, torch.Tensor | None]],
    global_shapes: Mapping[str, tuple[int, int]],
) -> Factors:
    """Scatter sub-model factors into global coordinates (zeros in removed rows/columns).

    Modules absent from ``index_map`` (not prunable, e.g. a classifier) are passed through unchanged.
    """
    out: Factors = {}
    for name, (a, b) in factors.items():
        if name not in index_map:
            out[name] = (a, b)
            continue
        rows, cols = index_map[name]
        g_out, g_in = global_shapes[name]
        a_full = a
        if cols is not None:
            a_full = a.new_zeros(a.shape[0], g_in)
            a_full[:, cols.to(a.device)] = a
        b_full = b
        if rows is not None:
            b_full = b.new_zeros(g_out, b.shape[1])
            b_full[rows.to(b.device)] = b
        if a_full.shape[1] != g_in or b_full.shape[0] != g_out:
            raise ValueError(
                f"{name}: mapped LoRA shapes {tuple(b_full.shape)}x{tuple(a_full.shape)} "
                f"do not match global {(g_out, g_in)}"
            )
        out[name] = (a_full, b_full)
    return out


def lora_to_sub(
    factors_full: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    index_map: Mapping[str, tuple[torch.Tensor | None, torch.Tensor | None]],
) -> Factors:
    """Inverse of :func:`lora_to_global`: slice global factors down to a sub-model's coordinates."""
    out: Factors = {}
    for name, (a, b) in factors_full.items():
        rows, cols = index_map.get(name, (None, None))
        a_sub = a if cols is None else a.index_select(1, cols.to(a.device))
        b_sub = b if rows is None else b.index_select(0, rows.to(b.device))
        out[name] = (a_sub.clone(), b_sub.clone())
    return out


@torch.no_grad()
def merge_lora_delta(model: nn.Module, factors_full: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Add ``B @ A`` into the base weight of each named Linear of ``model`` in place.

    Used before a global pruning step so the learned adapters survive in the base weights.  Names are
    plain HF names; a PEFT-wrapped model is looked through (its LoRA weights are left as they are).
    """
    model, _ = _plain_root(model)
    for name, (a, b) in factors_full.items():
        lin = unwrap_linear(model.get_submodule(name))
        delta = (b.to(torch.float32) @ a.to(torch.float32)).to(
            device=lin.weight.device, dtype=lin.weight.dtype
        )
        if delta.shape != lin.weight.shape:
            raise ValueError(f"{name}: delta {tuple(delta.shape)} vs weight {tuple(lin.weight.shape)}")
        lin.weight.add_(delta)
