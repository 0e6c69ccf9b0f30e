"""PEFT LoRA on (possibly pruned) classifiers, and the plain-tensor form adapters travel in.

Adapters cross the network as ``{module_name: (A, B)}`` with ``delta W = B @ A``: PEFT's
``lora_alpha / r`` scaling is folded into ``B`` on the way out and divided back on the way in. That makes
adapters of different ranks directly comparable, which heterogeneous-rank aggregation relies on.
Module names are the plain Hugging Face names (no ``base_model.model.`` prefix).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from fedspine_ray.pruning.lora_mapping import Factors

PEFT_PREFIX = "base_model.model."
ADAPTER = "default"


def attach_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    dropout: float,
    targets: list[str],
    trainable_modules: list[str],
    rank_pattern: Mapping[str, int] | None = None,
) -> PeftModel:
    """Wrap ``model`` with a rank-``rank`` LoRA; the head modules stay fully trainable.

    ``rank_pattern`` gives some modules (by full name) another rank, e.g. LEGEND's higher ranks near the output;
    PEFT then scales each by ``alpha / its rank``, which the folded-``B`` tensor form accounts for.
    """
    config = PeftLoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        bias="none",
        # PEFT matches pattern keys as regular expressions against a module's name (or its dotted suffix)
        rank_pattern={re.escape(name): int(r) for name, r in (rank_pattern or {}).items()},
    )
    peft_model = get_peft_model(model, config)
    for name, parameter in peft_model.named_parameters():
        plain = name.removeprefix(PEFT_PREFIX)
        if any(plain == m or plain.startswith(m + ".") for m in trainable_modules):
            parameter.requires_grad_(True)
    return peft_model


def _lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    return {
        name.removeprefix(PEFT_PREFIX): module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A
    }


def extract_factors(peft_model: nn.Module) -> Factors:
    """Current adapters as detached ``(A, B * scaling)`` pairs keyed by plain module name."""
    factors: Factors = {}
    for name, layer in _lora_layers(peft_model).items():
        a = layer.lora_A[ADAPTER].weight.detach().clone()
        b = layer.lora_B[ADAPTER].weight.detach().clone() * layer.scaling[ADAPTER]
        factors[name] = (a, b)
    return factors


def load_factors(peft_model: nn.Module, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Set adapters from ``(A, B)`` pairs (scaling folded into B). Every LoRA layer must be covered."""
    layers = _lora_layers(peft_model)
    missing = sorted(set(layers) - set(factors))
    if missing:
        raise KeyError(f"adapter for module {missing[0]!r} missing from the update")
    with torch.no_grad():
        for name, layer in layers.items():
            a, b = factors[name]
            layer.lora_A[ADAPTER].weight.copy_(a)
            layer.lora_B[ADAPTER].weight.copy_(b / layer.scaling[ADAPTER])


def module_state(model: nn.Module, modules: list[str]) -> dict[str, torch.Tensor]:
    """Detached copy of the parameters of the named top-level modules (the classification head)."""
    state = {}
    for name, tensor in model.state_dict().items():
        plain = name.removeprefix(PEFT_PREFIX).replace(".modules_to_save.default", "")
        if any(plain.startswith(m + ".") for m in modules):
            state[plain] = tensor.detach().clone()
    return state


def load_module_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy head parameters into a plain or PEFT-wrapped model, by plain name."""
    targets = {name.removeprefix(PEFT_PREFIX): tensor for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        for name, value in state.items():
            if name not in targets:
                raise KeyError(f"head parameter {name!r} not found in the model")
            targets[name].copy_(value)


def is_lora_target(name: str, targets: Sequence[str]) -> bool:
    """Whether module ``name`` is one LoRA wraps: its name is a target or ends with ``.<target>`` (PEFT's
    suffix rule, so ``q_proj`` matches every layer's ``...self_attn.q_proj``)."""
    return any(name == t or name.endswith("." + t) for t in targets)


def lora_target_shapes(model: nn.Module, targets: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``(out_features, in_features)`` of every Linear that LoRA targets, keyed by plain module name."""
    return {
        name: (module.out_features, module.in_features)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and is_lora_target(name, targets)
    }


def init_factors(shapes: Mapping[str, tuple[int, int]], rank: int, seed: int) -> Factors:
    """Fresh adapters as PEFT initialises them: A Kaiming-uniform, B zero (so delta W starts at 0)."""
    generator = torch.Generator().manual_seed(seed)
    factors: Factors = {}
    for name in sorted(shapes):
        out_features, in_features = shapes[name]
        bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform_(a=sqrt(5)) bound for a [r, in] weight
        a = (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound
        factors[name] = (a, torch.zeros(out_features, rank))
    return factors
