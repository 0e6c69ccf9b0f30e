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
"""

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
from .architectures import ADAPTERS, LayerSpec, get_adapter, layer_specs
from .importance import IMPORTANCE_METHODS, UnitImportance, compute_importance
from .lora_mapping import (
    linear_index_map,
    linear_shapes,
    lora_to_global,
    lora_to_sub,
    merge_lora_delta,
)
from .plan import (
    PruningPlan,
    identity_plan,
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

__all__ = [
    "ADAPTERS",
    "IMPORTANCE_METHODS",
    "SCHEDULES",
    "LayerSpec",
    "PrunableUnits",
    "PruningPlan",
    "UnitImportance",
    "apply_plan",
    "compute_importance",
    "count_parameters",
    "expand_units",
    "extend_and_select",
    "extract_submodel",
    "submodel_sharing_weights",
    "flops_per_token",
    "get_adapter",
    "identity_plan",
    "layer_shapes",
    "layer_specs",
    "linear_index_map",
    "linear_shapes",
    "load_pruned",
    "lora_to_global",
    "lora_to_sub",
    "merge_lora_delta",
    "n_keep",
    "original_shapes",
    "plan_for_original_ratio",
    "plan_for_ratio",
    "plan_from_keep_counts",
    "relative_plan",
    "plan_sparsity",
    "predicted_parameter_count",
    "prunable_units",
    "ratio_for_sparsity",
    "save_pruned",
    "unit_slices",
    "shapes_summary",
    "sparsity",
    "sparsity_at_progress",
    "sparsity_schedule",
]
