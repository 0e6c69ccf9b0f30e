"""Unit importance scores (which heads/KV groups and MLP channels matter).

Scores are per block and per unit; they are only compared *within* a block and unit kind, so the
absolute scale does not matter.  Methods are registered by name in :data:`IMPORTANCE_METHODS` so the
YAML config (``pruning.importance: magnitude|taylor``) can pick one.

* ``magnitude``: L2 norm of all weights (and row biases) that belong to the unit.  Data-free, cheap.
* ``taylor``: first-order Taylor estimate of the loss change when the unit is removed,
  ``sum_{w in unit} |w * dL/dw|`` with gradients accumulated over the calibration batches
  (``model(**batch).loss``).  Needs labelled batches.

Both work on a plain HF model and on a PEFT-wrapped one (base weights are read through the LoRA
wrapper; for Taylor the base weights get ``requires_grad`` temporarily).  The LoRA delta itself is *not*
included: merge it first (:func:`fedspine_ray.pruning.lora_mapping.merge_lora_delta`) if it should count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .architectures import COLS, LayerSpec, SliceSpec, get_linear, layer_specs, unit_view


@dataclass
class UnitImportance:
    """Per-layer importance: ``attention[i]`` has one score per attention unit, ``mlp[i]`` per channel."""

    attention: dict[int, torch.Tensor] = field(default_factory=dict)
    mlp: dict[int, torch.Tensor] = field(default_factory=dict)
    method: str = ""

    @property
    def num_layers(self) -> int:
        return len(self.attention)


def _unit_view(t: torch.Tensor, s: SliceSpec, n_units: int) -> torch.Tensor:
    """Reshape a weight (or row bias) so dim 0 indexes units: [n_units, rest] (fused parts gathered)."""
    return unit_view(t, s, n_units)


def _per_unit(
    spec: LayerSpec,
    slices: tuple[SliceSpec, ...],
    n: int,
    fn: Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Sum ``fn(grad, param)`` (shape [n, k]) over each unit's weights and row-biases."""
    out = torch.zeros(n, dtype=torch.float64)
    for s in slices:
        lin = get_linear(spec, s)
        params = [lin.weight] + ([lin.bias] if (lin.bias is not None and s.axis != COLS) else [])
        for p in params:
            v = _unit_view(p.detach(), s, n)
            g = None if p.grad is None else _unit_view(p.grad.detach(), s, n)
            out += fn(g, v).double().sum(dim=1).cpu()
    return out


def magnitude_importance(model: nn.Module, batches: Iterable[Mapping] | None = None) -> UnitImportance:
    """L2 norm of each unit's parameters (weights of all Linears it spans + row biases)."""
    imp = UnitImportance(method="magnitude")
    sq = lambda g, v: v.float() ** 2  # noqa: E731
    for spec in layer_specs(model):
        imp.attention[spec.index] = _per_unit(spec, spec.attention, spec.n_units, sq).sqrt().float()
        imp.mlp[spec.index] = _per_unit(spec, spec.mlp, spec.n_channels, sq).sqrt().float()
    return imp


def _prunable_params(model: nn.Module) -> list[nn.Parameter]:
    params: dict[int, nn.Parameter] = {}
    for spec in layer_specs(model):
        for s in spec.attention + spec.mlp:
            lin = get_linear(spec, s)
            for p in (lin.weight, lin.bias):
                if p is not None:
                    params[id(p)] = p
    return list(params.values())


def taylor_importance(model: nn.Module, batches: Iterable[Mapping] | None = None) -> UnitImportance:
    """First-order Taylor ``sum |w * dL/dw|`` per unit, gradients summed over ``batches``.

    The model's grads, ``requires_grad`` flags and train/eval mode are restored afterwards, so this can
    run on a model that is in the middle of training.  Dropout is disabled (eval mode) so the scores are
    deterministic. Only the prunable Linears require grad during the pass: the scores read nothing else,
    and backward then skips the embedding tables' dense gradients (a 30k x 384 table for MiniLM) and the
    first layer's input gradient; the gradients it does compute are the same numbers either way.
    """
    if batches is None:
        raise ValueError("taylor importance needs calibration batches (dicts with input_ids/labels)")
    params = _prunable_params(model)
    saved_flags = [(p, p.requires_grad) for p in model.parameters()]
    saved_grads = [(p, p.grad) for p in model.parameters()]
    was_training = model.training
    device = params[0].device
    try:
        for p in model.parameters():
            p.grad = None
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        model.eval()
        n_batches = 0
        with torch.enable_grad():
            for batch in batches:
                batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
                loss = model(**batch).loss
                if loss is None:
                    raise ValueError("model(**batch).loss is None: calibration batches need labels")
                loss.backward()
                n_batches += 1
        if n_batches == 0:
            raise ValueError("taylor importance got an empty batch iterable")
        return taylor_scores(model)
    finally:
        for p, grad in saved_grads:
            p.grad = grad
        for p, req in saved_flags:
            p.requires_grad_(req)
        model.train(was_training)


def taylor_scores(model: nn.Module) -> UnitImportance:
    """Taylor scores ``sum |w * grad|`` per unit from the gradients already in ``p.grad``.

    Split from :func:`taylor_importance` so a backward pass run elsewhere (the DeepSpeed server backend,
    whose gradients live in ZeRO partitions) can be scored by the same code; parameters without a
    gradient score 0.
    """
    imp = UnitImportance(method="taylor")
    taylor = lambda g, v: (v.float() * g.float()).abs() if g is not None else torch.zeros_like(v)  # noqa: E731
    for spec in layer_specs(model):
        imp.attention[spec.index] = _per_unit(spec, spec.attention, spec.n_units, taylor).float()
        imp.mlp[spec.index] = _per_unit(spec, spec.mlp, spec.n_channels, taylor).float()
    return imp


IMPORTANCE_METHODS: dict[str, Callable[..., UnitImportance]] = {
    "magnitude": magnitude_importance,
    "taylor": taylor_importance,
}


def compute_importance(
    model: nn.Module, method: str = "magnitude", batches: Iterable[Mapping] | None = None
) -> UnitImportance:
    """Score every attention unit and MLP channel of ``model`` with the registered ``method``."""
    try:
        fn = IMPORTANCE_METHODS[method]
    except KeyError:
        raise ValueError(
            f"unknown importance method {method!r}; known: {sorted(IMPORTANCE_METHODS)}"
        ) from None
    return fn(model, batches)
