"""Run checkpoints: everything a killed federated run needs to continue as if it had never stopped.

``runtime.checkpoint_every: N`` makes the launching process ask the server actor for its state after every
N-th round and write it to ``<run dir>/checkpoint.pt``; ``fedspine run --resume RUN_DIR`` loads it into a
fresh server and fresh clients and goes on with the next round. This module encodes and decodes the state
in the server actor; the launcher only moves the bytes (:mod:`fedspine_ray.launch.checkpoint_files`).
What is in it, and why:

* the global model, pickled whole: after pruning its Linears and attention modules have other shapes than
  the model on disk, and pickling keeps them (and any strategy attribute that refers to the model) as is;
* the strategy's ``state_dict()`` (global adapters, head, bandits, pruning bookkeeping, merge log);
* the server's state: simulated clock, which sub-model each client holds, dead clients;
* every live client's held sub-model and static tensors, so resumed devices are charged exactly the bytes
  the uninterrupted run charged them. Tensors that are equal across clients and the global model
  (embeddings, unpruned weights) are stored once (:func:`deduplicate_clients`);
* the global RNG states (torch, NumPy, ``random``) of the server process.

Device conditions need nothing: they are pure functions of ``(seed, client, round)`` (``devices``).
The file is written to a temporary name, fsynced and renamed over the old one, so a crash while writing
leaves the previous checkpoint intact. ``checkpoint.json`` beside it says which round it holds.
"""

from __future__ import annotations

import hashlib
import io
import random
from typing import Any

import numpy as np
import torch
from torch import nn

#: Bumped when the layout of the state changes; a checkpoint with another version is refused.
CHECKPOINT_FORMAT = 1


class CheckpointFormatError(ValueError):
    """The checkpoint was written by another layout version; the message names the fix."""


def rng_states() -> dict[str, Any]:
    """The process-global RNG states a server uses (torch, NumPy's legacy global RNG, ``random``)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def _tensor_key(tensor: torch.Tensor) -> tuple[Any, ...]:
    flat = tensor.detach().contiguous().reshape(-1)
    digest = hashlib.blake2b(flat.view(torch.uint8).numpy().tobytes(), digest_size=16).digest()
    return (tuple(tensor.shape), tensor.dtype, digest)


def _module_slots(module: nn.Module) -> list[tuple[str, str, nn.Module, str]]:
    """(path, kind, owner, name) of every parameter and buffer, each tensor object once (ties kept)."""
    seen: set[int] = set()
    slots = []
    for path, owner in module.named_modules():
        for kind, table in (("param", owner._parameters), ("buffer", owner._buffers)):
            for name, tensor in table.items():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    slots.append((path, kind, owner, name))
    return slots


def deduplicate_clients(global_model: nn.Module | None, clients: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Replace client tensors equal to one already seen (in the global model or an earlier client).

    ``torch.save`` writes each tensor once, but clients live in other processes, so their copies of e.g.
    the embeddings are distinct objects; without this a checkpoint holds them once per client. The
    replaced tensors become empty placeholders and the returned table says where each comes from;
    :func:`restore_clients` puts a *copy* back, so no two restored tensors share memory by accident.
    """
    pool: list[torch.Tensor] = []
    index: dict[tuple[Any, ...], int] = {}
    refs: list[tuple[int, str, str, str, int]] = []

    def lookup(tensor: torch.Tensor) -> int | None:
        key = _tensor_key(tensor)
        if key in index:
            return index[key]
        index[key] = len(pool)
        pool.append(tensor.detach())
        return None

    if global_model is not None:
        for _, _kind, owner, name in _module_slots(global_model):
            lookup(getattr(owner, name))
    for cid, state in clients.items():
        base = state.get("base")
        if base is not None:
            for path, kind, owner, name in _module_slots(base):
                tensor = getattr(owner, name)
                found = lookup(tensor)
                if found is not None:
                    placeholder = torch.empty(0, dtype=tensor.dtype)
                    if kind == "param":
                        owner._parameters[name].data = placeholder
                    else:
                        owner._buffers[name] = placeholder
                    refs.append((cid, kind, path, name, found))
        for name, tensor in (state.get("static") or {}).items():
            found = lookup(tensor)
            if found is not None:
                state["static"][name] = torch.empty(0, dtype=tensor.dtype)
                refs.append((cid, "static", "", name, found))
    return {"pool": pool, "refs": refs}


def restore_clients(clients: dict[int, dict[str, Any]], shared: dict[str, Any]) -> None:
    """Undo :func:`deduplicate_clients` in place: every placeholder gets its own copy of the tensor."""
    pool = shared["pool"]
    for cid, kind, path, name, found in shared["refs"]:
        tensor = pool[found].clone()
        state = clients[cid]
        if kind == "static":
            state["static"][name] = tensor
            continue
        owner = state["base"].get_submodule(path)
        if kind == "param":
            owner._parameters[name].data = tensor
        else:
            owner._buffers[name] = tensor


def encode_checkpoint(state: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """``state`` (from ``FederatedServer.checkpoint_state``) as the bytes of a checkpoint file, with the
    checkpoint.json facts (round, bytes saved by deduplication). Runs in the server actor."""
    state = {**state, "format": CHECKPOINT_FORMAT}
    clients = state.get("clients", {})
    state["shared_tensors"] = deduplicate_clients(state.get("global_model"), clients)
    shared = sum(pool_bytes(state["shared_tensors"], ref) for ref in state["shared_tensors"]["refs"])
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue(), {"round": int(state["round"]), "bytes_deduplicated": shared}


def decode_checkpoint(data: bytes, source: str = "checkpoint.pt") -> dict[str, Any]:
    """The state :func:`encode_checkpoint` encoded, with every client's deduplicated tensors restored."""
    # The checkpoint pickles the model and strategy objects (weights_only cannot): only load your own runs.
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointFormatError(
            f"{source}: checkpoint format {state.get('format')!r}, this version reads {CHECKPOINT_FORMAT}; "
            "fix: resume with the fedspine-ray version that wrote it"
        )
    restore_clients(state.get("clients", {}), state.pop("shared_tensors", {"pool": [], "refs": []}))
    return state


def pool_bytes(shared: dict[str, Any], ref: tuple[int, str, str, str, int]) -> int:
    tensor = shared["pool"][ref[-1]]
    return tensor.numel() * tensor.element_size()
