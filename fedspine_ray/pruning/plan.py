"""Pruning plans: which attention units and MLP channels of each block survive.

A :class:`PruningPlan` is a small JSON-able object (it travels between Ray actors and into run logs).
Indices are sorted and *relative to the model the plan is applied to* (which may itself already be
pruned).  ``compose`` chains two plans into one relative to the earlier model.

Nestedness: all planners rank each layer's units once (stable descending sort on importance, ties
broken by lower index) and keep a prefix of that ranking; since the number kept is monotone in the
ratio, the plan for a lower ratio contains every unit of the plan for a higher ratio.  This is what lets
FedSpine hand out sub-models of different widths that share coordinates with the global model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .architectures import UnsupportedArchitectureError, layer_specs
from .importance import UnitImportance


@dataclass
class PruningPlan:
    """Kept units per layer.  ``attention[i]`` / ``mlp[i]``: sorted kept indices of layer ``i``.

    ``base_units`` / ``base_channels`` record the sizes of the model the plan refers to, so a plan can be
    validated against a model and its parameter count predicted without the model.
    """

    attention: dict[int, list[int]] = field(default_factory=dict)
    mlp: dict[int, list[int]] = field(default_factory=dict)
    base_units: dict[int, int] = field(default_factory=dict)
    base_channels: dict[int, int] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.attention)

    def kept_units(self) -> dict[int, int]:
        return {i: len(v) for i, v in self.attention.items()}

    def kept_channels(self) -> dict[int, int]:
        return {i: len(v) for i, v in self.mlp.items()}

    def is_identity(self) -> bool:
        return all(
            len(self.attention[i]) == self.base_units[i] and len(self.mlp[i]) == self.base_channels[i]
            for i in self.attention
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (string layer keys, plain int lists)."""
        return {
            "attention": {str(i): list(map(int, v)) for i, v in sorted(self.attention.items())},
            "mlp": {str(i): list(map(int, v)) for i, v in sorted(self.mlp.items())},
            "base_units": {str(i): int(v) for i, v in sorted(self.base_units.items())},
            "base_channels": {str(i): int(v) for i, v in sorted(self.base_channels.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PruningPlan:
        conv = lambda m: {int(k): v for k, v in m.items()}  # noqa: E731
        return cls(
            attention={int(k): sorted(int(x) for x in v) for k, v in d["attention"].items()},
            mlp={int(k): sorted(int(x) for x in v) for k, v in d["mlp"].items()},
            base_units={k: int(v) for k, v in conv(d.get("base_units", {})).items()},
            base_channels={k: int(v) for k, v in conv(d.get("base_channels", {})).items()},
        )

    def compose(self, inner: PruningPlan) -> PruningPlan:
        """Plan equal to applying ``self`` then ``inner`` (``inner`` relative to the pruned model)."""
        out = PruningPlan(base_units=dict(self.base_units), base_channels=dict(self.base_channels))
        for i in self.layers:
            out.attention[i] = [self.attention[i][j] for j in inner.attention[i]]
            out.mlp[i] = [self.mlp[i][j] for j in inner.mlp[i]]
        return out

    def validate(self, model: nn.Module) -> None:
        """Raise if the plan does not refer to ``model``'s current sizes."""
        specs = layer_specs(model)
        if sorted(self.attention) != list(range(len(specs))) or sorted(self.mlp) != list(range(len(specs))):
            raise ValueError(f"plan covers layers {self.layers}, model has {len(specs)}")
        for s in specs:
            for kind, kept, n in (
                ("attention", self.attention[s.index], s.n_units),
                ("mlp", self.mlp[s.index], s.n_channels),
            ):
                if not kept:
                    raise ValueError(f"layer {s.index}: plan keeps no {kind} units")
                if kept != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= n:
                    raise ValueError(f"layer {s.index}: {kind} indices invalid for size {n}")


def relative_plan(outer: PruningPlan, inner: PruningPlan) -> PruningPlan | None:
    """The plan ``rel`` with ``outer.compose(rel) == inner``, or ``None`` if ``inner`` keeps a unit ``outer`` lacks.

    Both plans are in the same (e.g. original) coordinates. Used to turn a sub-model a device already
    holds (``outer``) into a smaller one (``inner``) locally, instead of downloading it.
    """
    rel = PruningPlan(base_units=outer.kept_units(), base_channels=outer.kept_channels())
    for i in outer.layers:
        for kind in ("attention", "mlp"):
            position = {unit: j for j, unit in enumerate(getattr(outer, kind)[i])}
            wanted = getattr(inner, kind)[i]
            if any(unit not in position for unit in wanted):
                return None
            getattr(rel, kind)[i] = [position[unit] for unit in wanted]
    return rel


def kept_importance(importance: UnitImportance, plan: PruningPlan) -> UnitImportance:
    """``importance`` for the model ``plan`` leaves: each layer's kept units' scores, in their new order.

    The scores must be of the model ``plan`` refers to (its kept indices are positions in them). Ranks a
    pruned model's units without another scoring pass over it (``pruning.rescore_after_prune: false``).
    """
    return UnitImportance(
        attention={i: importance.attention[i][plan.attention[i]] for i in importance.attention},
        mlp={i: importance.mlp[i][plan.mlp[i]] for i in importance.mlp},
        method=importance.method,
    )


def identity_plan(model: nn.Module) -> PruningPlan:
    """Plan that keeps everything (useful as a starting point for ``compose``); empty for a model whose
    architecture the engine cannot prune (it has no units: unpruned methods still keep this bookkeeping)."""
    plan = PruningPlan()
    try:
        specs = layer_specs(model)
    except UnsupportedArchitectureError:
        return plan
    for s in specs:
        plan.attention[s.index] = list(range(s.n_units))
        plan.mlp[s.index] = list(range(s.n_channels))
        plan.base_units[s.index] = s.n_units
        plan.base_channels[s.index] = s.n_channels
    return plan


def stable_ranking(scores: torch.Tensor) -> list[int]:
    """Indices by descending score; ties broken by lower index (deterministic => nested plans)."""
    values = scores.tolist()  # python floats: indexing the tensor per comparison key cost ~1 ms per layer
    return sorted(range(len(values)), key=lambda j: (-values[j], j))


def n_keep(n: int, ratio: float) -> int:
    """Units kept when removing ``ratio`` of ``n`` (round half up, at least one unit kept)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    removed = math.floor(ratio * n + 0.5 + 1e-9)
    return max(1, n - removed)


def plan_from_keep_counts(
    importance: UnitImportance, keep_units: Mapping[int, int], keep_channels: Mapping[int, int]
) -> PruningPlan:
    """Keep the top-``k`` units of each layer by importance (the primitive all planners use)."""
    plan = PruningPlan()
    for i in sorted(importance.attention):
        a, m = importance.attention[i], importance.mlp[i]
        ku = max(1, min(a.numel(), int(keep_units.get(i, a.numel()))))
        kc = max(1, min(m.numel(), int(keep_channels.get(i, m.numel()))))
        plan.attention[i] = sorted(stable_ranking(a)[:ku])
        plan.mlp[i] = sorted(stable_ranking(m)[:kc])
        plan.base_units[i] = a.numel()
        plan.base_channels[i] = m.numel()
    return plan


def _attention_removable(importance: UnitImportance, layer: int, prune_attention: bool) -> bool:
    """Attention units of ``layer`` may go: asked for, and more than one (MQA's single unit never goes)."""
    return prune_attention and importance.attention[layer].numel() > 1


def plan_for_ratio(
    importance: UnitImportance,
    ratio: float,
    protected_layers: Sequence[int] = (),
    layer_ratios: Mapping[int, float] | None = None,
    mlp_ratio: float | None = None,
    prune_attention: bool = True,
) -> PruningPlan:
    """Remove ``ratio`` of the attention units and MLP channels of every non-protected layer.

    Args:
        importance: scores of the model the plan will be applied to (defines sizes and ranking).
        ratio: fraction of units removed per layer (``mlp_ratio`` overrides it for channels).
        protected_layers: layer indices never pruned (negative indices count from the end).
        layer_ratios: per-layer overrides of ``ratio`` (applies to both unit kinds).
        prune_attention: ``False`` keeps every attention unit (only MLP channels go). A layer with a
            single attention unit (multi-query attention, see
            :func:`~fedspine_ray.pruning.architectures.attention_prunable`) always keeps it.
    """
    n_layers = importance.num_layers
    protected = {p % n_layers for p in protected_layers}
    layer_ratios = dict(layer_ratios or {})
    keep_u: dict[int, int] = {}
    keep_c: dict[int, int] = {}
    for i in sorted(importance.attention):
        if i in protected:
            r_a = r_m = 0.0
        else:
            r_a = layer_ratios.get(i, ratio) if _attention_removable(importance, i, prune_attention) else 0.0
            r_m = layer_ratios.get(i, ratio if mlp_ratio is None else mlp_ratio)
        keep_u[i] = n_keep(importance.attention[i].numel(), r_a)
        keep_c[i] = n_keep(importance.mlp[i].numel(), r_m)
    return plan_from_keep_counts(importance, keep_u, keep_c)


def plan_for_original_ratio(
    importance: UnitImportance,
    ratio: float,
    original_units: Mapping[int, int],
    original_channels: Mapping[int, int],
    protected_layers: Sequence[int] = (),
    prune_attention: bool = True,
) -> PruningPlan:
    """Like :func:`plan_for_ratio` but ``ratio`` is relative to the ORIGINAL (unpruned) layer sizes.

    Used for progressive global pruning: the global model is already pruned to some sparsity and the
    schedule asks for a higher one; each non-protected layer keeps ``n_keep(original, ratio)`` units
    (never more than it has now). Attention of a layer with a single (original) unit is never pruned.
    """
    n_layers = importance.num_layers
    protected = {p % n_layers for p in protected_layers}
    keep_u, keep_c = {}, {}
    for i in sorted(importance.attention):
        cur_u, cur_c = importance.attention[i].numel(), importance.mlp[i].numel()
        if i in protected:
            keep_u[i], keep_c[i] = cur_u, cur_c
        else:
            removable = _attention_removable(importance, i, prune_attention) and int(original_units[i]) > 1
            keep_u[i] = min(cur_u, n_keep(int(original_units[i]), ratio)) if removable else cur_u
            keep_c[i] = min(cur_c, n_keep(int(original_channels[i]), ratio))
    return plan_from_keep_counts(importance, keep_u, keep_c)
