"""What a model download really has to carry: tensors that never change stay on the device.

Embeddings, layer norms and other tensors outside the transformer blocks' Linear layers are frozen,
never receive merged adapters and are never pruned, so they are identical in every version of every
sub-model. A device keeps them after its first download; later downloads carry placeholders for them
(for MiniLM that is about half the bytes, the 30k-token embedding table alone).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from fedspine_ray.pruning import UnsupportedArchitectureError, layer_specs


def static_tensor_names(model: nn.Module, head_modules: Sequence[str]) -> list[str]:
    """Names of parameters and buffers that no strategy ever changes (outside block Linears and the head).

    A model the pruning engine cannot prune has no known blocks: all of its Linears count as changing."""
    try:
        block_prefixes = tuple(spec.prefix + "." for spec in layer_specs(model))
    except UnsupportedArchitectureError:
        block_prefixes = ("",)
    changing = set()
    for name, module in model.named_modules():
        in_block_linear = isinstance(module, nn.Linear) and name.startswith(block_prefixes)
        in_head = any(name == h or name.startswith(h + ".") for h in head_modules)
        if in_block_linear or in_head:
            changing.update(f"{name}.{leaf}" for leaf, _ in module.named_parameters(recurse=False))
    return [name for name in model.state_dict() if name not in changing]


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[leaf] = value


def strip_static(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """A copy of ``model`` whose static tensors are empty placeholders (the device fills them in).

    The placeholders are substituted through ``deepcopy``'s memo, so the large tensors are never copied.
    """
    wanted = set(names)
    memo: dict[int, object] = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if name in wanted:
            empty = torch.empty(0, dtype=tensor.dtype)
            memo[id(tensor)] = (
                nn.Parameter(empty, requires_grad=False) if isinstance(tensor, nn.Parameter) else empty
            )
    return copy.deepcopy(model, memo)


def collect_static(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {name: state[name] for name in names}


def restore_static_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Make ``model``'s tensor ``name`` be ``value`` (the object, not a copy): how processes share them."""
    _set_tensor(model, name, value)


def restore_static(model: nn.Module, cache: Mapping[str, torch.Tensor]) -> None:
    """Fill the placeholders of a stripped download from the device's cache of static tensors."""
    state = model.state_dict()
    for name, value in cache.items():
        if name in state and state[name].numel() == 0:
            _set_tensor(model, name, value)
