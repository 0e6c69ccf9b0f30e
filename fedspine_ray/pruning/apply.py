"""Physically apply a :class:`PruningPlan`, extract sub-models, and save/load pruned models.

Pruning shrinks ``nn.Linear`` weights (and row biases) in place.  The HF config keeps the *original*
``num_attention_heads`` / ``intermediate_size`` (the attention modules are built from them); the actual
per-layer sizes are recorded as ``config.fedspine_layer_shapes`` and the pre-pruning sizes as
``config.fedspine_original_shapes`` so sparsity is always measurable and a save round-trips.

``from_pretrained`` cannot load such a checkpoint (size mismatch); use :func:`load_pruned`, which goes
through the HF config + safetensors files: build from config without weight init, shrink each block to
the recorded shapes, then ``load_state_dict(..., assign=True)``.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from typing import Any

import torch
import transformers
from safetensors.torch import load_file
from torch import nn

from .architectures import (
    COLS,
    ORIGINAL_ATTR,
    ROWS,
    LayerSpec,
    SliceSpec,
    get_adapter,
    layer_specs,
    unwrap_linear,
)
from .plan import PruningPlan

SHAPES_ATTR = "fedspine_layer_shapes"


def expand_units(units: torch.Tensor, width: int) -> torch.Tensor:
    """Unit indices -> row/column indices (each unit spans ``width`` consecutive indices).

    Only right for a plain (non-fused) Linear; :meth:`SliceSpec.indices` handles both.
    """
    units = units.long()
    if width == 1:
        return units
    return (units[:, None] * width + torch.arange(width, device=units.device)[None, :]).reshape(-1)


def _shrink_linear(lin: nn.Linear, idx: torch.Tensor, axis: int) -> None:
    w = lin.weight
    idx = idx.to(w.device)
    lin.weight = nn.Parameter(w.data.index_select(axis, idx).clone(), requires_grad=w.requires_grad)
    if axis == ROWS:
        if lin.bias is not None:
            b = lin.bias
            lin.bias = nn.Parameter(b.data.index_select(0, idx).clone(), requires_grad=b.requires_grad)
        lin.out_features = int(idx.numel())
    else:
        lin.in_features = int(idx.numel())


def _check_plain(spec: LayerSpec, s: SliceSpec) -> nn.Linear:
    mod = spec.block.get_submodule(s.name)
    if not isinstance(mod, nn.Linear) or hasattr(mod, "base_layer"):
        raise TypeError(
            f"{spec.prefix}.{s.name} is {type(mod).__name__}; apply_plan needs the plain model "
            "(merge/unload PEFT adapters first and re-attach LoRA after pruning)"
        )
    return mod


def layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Current ``{"attention_units": [...], "mlp_channels": [...]}`` per layer."""
    specs = layer_specs(model)
    return {"attention_units": [s.n_units for s in specs], "mlp_channels": [s.n_channels for s in specs]}


def original_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Sizes before any pruning (recorded at the first :func:`apply_plan`, else the current sizes)."""
    rec = getattr(getattr(model, "config", None), ORIGINAL_ATTR, None)
    return copy.deepcopy(rec) if rec else layer_shapes(model)


def _record_shapes(model: nn.Module, original: dict[str, list[int]]) -> None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return
    setattr(cfg, ORIGINAL_ATTR, original)
    setattr(cfg, SHAPES_ATTR, layer_shapes(model))


def apply_plan(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Prune ``model`` in place to the units kept by ``plan`` (indices relative to ``model``); returns it."""
    plan.validate(model)
    adapter = get_adapter(model)
    original = original_shapes(model)
    for spec in adapter.specs(model):
        for slices, kept, n in (
            (spec.attention, plan.attention[spec.index], spec.n_units),
            (spec.mlp, plan.mlp[spec.index], spec.n_channels),
        ):
            if len(kept) == n:
                continue
            units = torch.tensor(kept, dtype=torch.long)
            for s in slices:
                _shrink_linear(_check_plain(spec, s), s.indices(units, n), s.axis)
        adapter.set_layer_sizes(
            spec.block, len(plan.attention[spec.index]), spec, n_channels=len(plan.mlp[spec.index])
        )
    _record_shapes(model, original)
    return model


def _cat_units(
    current: torch.Tensor, appended: torch.Tensor, s: SliceSpec, n_cur: int, axis: int
) -> torch.Tensor:
    """``current`` (``n_cur`` units) followed by ``appended`` units along ``axis``, part by part if fused."""
    if not s.fused:
        return torch.cat([current, appended], axis)
    n_app = appended.shape[axis] // s.width
    pieces = []
    for cur, app in zip(
        current.split([w * n_cur for w in s.segments], axis),
        appended.split([w * n_app for w in s.segments], axis),
        strict=True,
    ):
        pieces += [cur, app]
    return torch.cat(pieces, axis)


def extend_and_select(
    model: nn.Module,
    plan: PruningPlan,
    extra: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]] | None = None,
) -> nn.Module:
    """Append units to ``model`` in place, then keep ``plan``'s units; returns ``model``.

    ``extra`` maps a prunable Linear's plain name to the weight (and, for row-sliced Linears, bias) of the
    appended units, laid out like the Linear's own units along the pruned axis (for a fused Linear such as
    Phi-3's ``qkv_proj``: part by part, as :func:`unit_slices` returns them). ``plan`` indexes the
    current units followed by the appended ones. This lets a device grow the sub-model it holds with only
    the units it lacks, instead of downloading a whole new sub-model. Without ``extra`` it equals
    :func:`apply_plan`.
    """
    extra = extra or {}
    adapter = get_adapter(model)
    original = original_shapes(model)
    for spec in adapter.specs(model):
        for slices, kept, n_cur in (
            (spec.attention, plan.attention[spec.index], spec.n_units),
            (spec.mlp, plan.mlp[spec.index], spec.n_channels),
        ):
            units = torch.tensor(kept, dtype=torch.long)
            for s in slices:
                lin = _check_plain(spec, s)
                n = n_cur
                appended = extra.get(f"{spec.prefix}.{s.name}")
                if appended is not None:
                    weight, bias = appended
                    weight = weight.to(device=lin.weight.device, dtype=lin.weight.dtype)
                    lin.weight = nn.Parameter(
                        _cat_units(lin.weight.data, weight, s, n_cur, s.axis), requires_grad=False
                    )
                    if s.axis == ROWS and lin.bias is not None and bias is not None:
                        bias = bias.to(device=lin.bias.device, dtype=lin.bias.dtype)
                        lin.bias = nn.Parameter(
                            _cat_units(lin.bias.data, bias, s, n_cur, 0), requires_grad=False
                        )
                    n = n_cur + weight.shape[s.axis] // s.width
                _shrink_linear(lin, s.indices(units, n), s.axis)
        adapter.set_layer_sizes(
            spec.block, len(plan.attention[spec.index]), spec, n_channels=len(plan.mlp[spec.index])
        )
    _record_shapes(model, original)
    return model


def unit_slices(
    model: nn.Module, units: Mapping[int, Mapping[str, list[int]]]
) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Weights (and row biases) of the given units of ``model`` per prunable Linear, for :func:`extend_and_select`.

    ``units[layer]["attention" | "mlp"]`` lists unit indices of ``model``; layers or kinds with no units
    are skipped.
    """
    out: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for spec in layer_specs(model):
        for kind, slices, n in (
            ("attention", spec.attention, spec.n_units),
            ("mlp", spec.mlp, spec.n_channels),
        ):
            chosen = units.get(spec.index, {}).get(kind, [])
            if not chosen:
                continue
            index = torch.tensor(chosen, dtype=torch.long)
            for s in slices:
                lin = unwrap_linear(spec.block.get_submodule(s.name))
                rows = s.indices(index, n)
                weight = lin.weight.data.index_select(s.axis, rows).clone()
                bias = (
                    lin.bias.data.index_select(0, rows).clone()
                    if s.axis == ROWS and lin.bias is not None
                    else None
                )
                out[f"{spec.prefix}.{s.name}"] = (weight, bias)
    return out


def extract_submodel(global_model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Deep copy of ``global_model`` pruned to ``plan``; the global model is left untouched."""
    return apply_plan(copy.deepcopy(global_model), plan)


def submodel_sharing_weights(global_model: nn.Module, plan: PruningPlan) -> nn.Module:
    """``global_model`` pruned to ``plan`` as a new module tree that shares every tensor it does not prune.

    Equal to :func:`extract_submodel` in every value, without copying the embeddings, norms and kept layers
    first: the server builds one sub-model per distinct pruning ratio every round (with S-UCB's continuous
    ratios, about one per device), only to measure it and serialize it for the devices, and the deep copy
    was most of that cost. Pruned Linears get fresh tensors (``apply_plan`` rebinds them), so the global
    model is never changed through the result. Treat the result as read-only: changing a shared tensor in
    place (training it, ``requires_grad_``) would change the global model; use :func:`extract_submodel` to
    train a sub-model in the same process.
    """
    shared: dict[int, object] = {id(t): t for t in (*global_model.parameters(), *global_model.buffers())}
    return apply_plan(copy.deepcopy(global_model, shared), plan)


def prefix_plan(shapes: dict[str, list[int]]) -> PruningPlan:
    """Plan keeping the first ``k`` units of each layer (used to rebuild recorded shapes on load)."""
    plan = PruningPlan()
    for i, (u, c) in enumerate(zip(shapes["attention_units"], shapes["mlp_channels"], strict=True)):
        plan.attention[i] = list(range(int(u)))
        plan.mlp[i] = list(range(int(c)))
    return plan


def _fill_bases(plan: PruningPlan, model: nn.Module) -> PruningPlan:
    for s in layer_specs(model):
        plan.base_units[s.index] = s.n_units
        plan.base_channels[s.index] = s.n_channels
    return plan


def save_pruned(model: nn.Module, path: str | os.PathLike, **kwargs: Any) -> None:
    """``save_pretrained`` with the per-layer shapes recorded in ``config.json``."""
    if getattr(model.config, SHAPES_ATTR, None) is None or getattr(model.config, ORIGINAL_ATTR, None) is None:
        _record_shapes(model, original_shapes(model))
    else:
        setattr(model.config, SHAPES_ATTR, layer_shapes(model))
    model.save_pretrained(path, **kwargs)


def _load_state(path: str) -> dict[str, torch.Tensor]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for fname in files:
        state.update(load_file(os.path.join(path, fname)))
    return state


def load_pruned(path: str | os.PathLike, model_class: type | None = None, **config_kwargs: Any) -> nn.Module:
    """Load a model saved by :func:`save_pruned` (offline: local config.json + safetensors).

    ``model_class`` defaults to ``config.architectures[0]`` from the transformers namespace.
    A checkpoint without recorded shapes is loaded with ``model_class.from_pretrained``.
    """
    from transformers.initialization import no_init_weights

    path = os.fspath(path)
    config = transformers.AutoConfig.from_pretrained(path, **config_kwargs)
    if model_class is None:
        archs = getattr(config, "architectures", None) or []
        if not archs or not hasattr(transformers, archs[0]):
            raise ValueError(f"cannot infer model class from config.architectures={archs}; pass model_class")
        model_class = getattr(transformers, archs[0])
    shapes = getattr(config, SHAPES_ATTR, None)
    if not shapes:
        return model_class.from_pretrained(path, config=config)
    with no_init_weights():
        model = model_class._from_config(config)
    orig = copy.deepcopy(getattr(config, ORIGINAL_ATTR, None)) or layer_shapes(model)
    apply_plan(model, _fill_bases(prefix_plan(shapes), model))
    state = _load_state(path)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    real_missing = [k for k in missing if k not in tied]
    if real_missing or unexpected:
        raise RuntimeError(f"load_pruned: missing={real_missing} unexpected={list(unexpected)}")
    setattr(model.config, ORIGINAL_ATTR, orig)
    model.eval()
    return model


__all__ = [
    "COLS",
    "ROWS",
    "apply_plan",
    "expand_units",
    "extract_submodel",
    "submodel_sharing_weights",
    "layer_shapes",
    "load_pruned",
    "original_shapes",
    "prefix_plan",
    "save_pruned",
]
