"""Structured pruning engine of FedSpine-Ray (pure PyTorch/transformers, no Ray).

Typical global step (server side)::

    merge_lora_delta(global_model, aggregated_factors)          # keep what LoRA learned
    imp = compute_importance(global_model, "taylor", batches)   # or "magnitude"
    s = sparsity_schedule("cubic", target, step, total_steps)   # global sparsity for this step
    r = ratio_for_sparsity(global_model, s, protected_layers)
    plan = plan_for_original_ratio(imp, r, *original counts*, protected_layers)
    apply_plan(global_model, plan)

and per client ``extract_submodel(global_model, plan_for_ratio(imp, client_ratio, ...))`` with LoRA
factors moved between coordinate systems by :func:`lora_to_global` / :func:`lora_to_sub`.
See docs/pruning.md.

Names are imported lazily (PEP 562): importing this package (or ``.architectures``, whose
:func:`~fedspine_ray.pruning.architectures.check_prunable_config` preflight uses) does not import torch.

May import: torch and transformers only, nothing else of fedspine_ray (the device-side pruner,
:mod:`.local`, included): the engine is usable, and tested, on its own.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "apply_plan",
            "expand_units",
            "extend_and_select",
            "extract_submodel",
            "layer_shapes",
            "load_pruned",
            "original_shapes",
            "save_pruned",
            "submodel_sharing_weights",
            "unit_slices",
        ),
        "apply",
    ),
    **dict.fromkeys(
        (
            "ADAPTERS",
            "DECODER_FAMILIES",
            "ConfigShapes",
            "LayerSpec",
            "SliceSpec",
            "UnsupportedArchitectureError",
            "attention_prunable",
            "check_prunable_config",
            "config_lora_targets",
            "config_shapes",
            "get_adapter",
            "layer_specs",
            "lora_target_names",
            "unit_view",
        ),
        "architectures",
    ),
    **dict.fromkeys(("IMPORTANCE_METHODS", "UnitImportance", "compute_importance"), "importance"),
    **dict.fromkeys(
        ("linear_index_map", "prunable_linear_shapes", "lora_to_global", "lora_to_sub", "merge_lora_delta"),
        "lora_mapping",
    ),
    **dict.fromkeys(
        (
            "PruningPlan",
            "identity_plan",
            "kept_importance",
            "n_keep",
            "plan_for_original_ratio",
            "plan_for_ratio",
            "plan_from_keep_counts",
            "relative_plan",
        ),
        "plan",
    ),
    **dict.fromkeys(("SCHEDULES", "sparsity_at_progress", "sparsity_schedule"), "schedule"),
    **dict.fromkeys(
        (
            "PrunableUnits",
            "count_parameters",
            "flops_per_token",
            "plan_sparsity",
            "predicted_parameter_count",
            "prunable_units",
            "ratio_for_sparsity",
            "shapes_summary",
            "sparsity",
        ),
        "stats",
    ),
}

__all__ = [
    "ADAPTERS",
    "ConfigShapes",
    "DECODER_FAMILIES",
    "IMPORTANCE_METHODS",
    "LayerSpec",
    "PrunableUnits",
    "PruningPlan",
    "SCHEDULES",
    "SliceSpec",
    "UnitImportance",
    "UnsupportedArchitectureError",
    "apply_plan",
    "attention_prunable",
    "check_prunable_config",
    "compute_importance",
    "config_lora_targets",
    "config_shapes",
    "count_parameters",
    "expand_units",
    "extend_and_select",
    "extract_submodel",
    "flops_per_token",
    "get_adapter",
    "identity_plan",
    "kept_importance",
    "layer_shapes",
    "layer_specs",
    "linear_index_map",
    "prunable_linear_shapes",
    "load_pruned",
    "lora_target_names",
    "lora_to_global",
    "lora_to_sub",
    "merge_lora_delta",
    "n_keep",
    "original_shapes",
    "plan_for_original_ratio",
    "plan_for_ratio",
    "plan_from_keep_counts",
    "plan_sparsity",
    "predicted_parameter_count",
    "prunable_units",
    "ratio_for_sparsity",
    "relative_plan",
    "save_pruned",
    "shapes_summary",
    "sparsity",
    "sparsity_at_progress",
    "sparsity_schedule",
    "submodel_sharing_weights",
    "unit_slices",
    "unit_view",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover - static analysers see the eager imports
    from .apply import (
        apply_plan,
        expand_units,
        extend_and_select,
        extract_submodel,
        layer_shapes,
        load_pruned,
        original_shapes,
        save_pruned,
        submodel_sharing_weights,
        unit_slices,
    )
    from .architectures import (
        ADAPTERS,
        DECODER_FAMILIES,
        ConfigShapes,
        LayerSpec,
        SliceSpec,
        UnsupportedArchitectureError,
        attention_prunable,
        check_prunable_config,
        config_lora_targets,
        config_shapes,
        get_adapter,
        layer_specs,
        lora_target_names,
        unit_view,
    )
    from .importance import IMPORTANCE_METHODS, UnitImportance, compute_importance
    from .lora_mapping import (
        linear_index_map,
        lora_to_global,
        lora_to_sub,
        merge_lora_delta,
        prunable_linear_shapes,
    )
    from .plan import (
        PruningPlan,
        identity_plan,
        kept_importance,
        n_keep,
        plan_for_original_ratio,
        plan_for_ratio,
        plan_from_keep_counts,
        relative_plan,
    )
    from .schedule import SCHEDULES, sparsity_at_progress, sparsity_schedule
    from .stats import (
        PrunableUnits,
        count_parameters,
        flops_per_token,
        plan_sparsity,
        predicted_parameter_count,
        prunable_units,
        ratio_for_sparsity,
        shapes_summary,
        sparsity,
    )
