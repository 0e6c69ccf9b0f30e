"""The device side: a client's private data, the model it holds, and local LoRA training.

The class is plain Python (tests can run it in-process). The server runs it either as one Ray actor per
client (``ray.remote(FederatedClient).options(num_cpus=..., memory=..., resources=..., num_gpus=...)``) or,
pooled, as one of many virtual clients inside a pool worker of its device class (runtime/pool.py).

A client whose process was given a GPU (``num_gpus`` of its device class or ``clients.resources`` entry)
keeps its model on CUDA and trains there in ``clients.precision`` (fp32, or bf16 / fp16 autocast with the
held model and the adapters in fp32); tensors cross to the CPU only to cross the network: what it sends
back (factors, head, checkpoint state) is on the CPU, what it receives is moved to its device on arrival.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from collections.abc import Hashable
from typing import Any

import numpy as np
import torch
from torch import nn

from fedspine_ray.data.tokens import TokenizedSplit
from fedspine_ray.messages import Derivation, FitResult, FitTask
from fedspine_ray.modeling.adapters import (
    attach_lora,
    extract_factors,
    load_factors,
    load_module_state,
    module_state,
)
from fedspine_ray.pruning import extend_and_select, merge_lora_delta
from fedspine_ray.pruning.local import LocalPruner
from fedspine_ray.runtime.transfer import collect_static, restore_static, restore_static_tensor

log = logging.getLogger("fedspine_ray.client")
#: Autocast dtypes of ``clients.precision`` on a GPU.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def node_id() -> str:
    """The Ray node this process runs on ("" outside Ray): clients.parquet's ``node_id``."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def to_cpu(tree: Any) -> Any:
    """``tree`` (tensors in dicts, lists, tuples) with every tensor on the CPU: what crosses the network."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_cpu(v) for v in tree)
    return tree


def cpu_copy(model: nn.Module) -> nn.Module:
    """A CPU copy of a module held on a GPU, without a second copy on the GPU (deepcopy's memo)."""
    memo: dict[int, object] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        moved = tensor.detach().cpu()
        memo[id(tensor)] = (
            nn.Parameter(moved, requires_grad=False) if isinstance(tensor, nn.Parameter) else moved
        )
    return copy.deepcopy(model, memo)


class ShardView:
    """A client's training shard as row indices into a split its process holds once (pool workers).

    Thousands of virtual clients of one worker share one tensor of token ids instead of each owning a
    copy; a client's batches index it (``TokenizedSplit.batch``), so they are the same tensors either way.
    """

    def __init__(self, split: TokenizedSplit, rows: np.ndarray) -> None:
        self.split, self.rows = split, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        return self.split.batch(self.rows[np.asarray(indices, dtype=np.int64)])


class ProcessModels:
    """What one process keeps for all the (virtual) clients it serves, so they share memory.

    ``static``: one copy of the tensors no model version changes (runtime/transfer.py). ``whole``: every
    base received whole that some client still holds, keyed by ``base_key`` with a holder count; clients
    holding the same key share one module (training only attaches and strips LoRA on it, and every fit
    loads its own head). A client about to derive a new base from a shared one first takes a private copy
    (copy-on-write), so each client's model is exactly what it would be in a process of its own.
    """

    def __init__(self) -> None:
        self.static: dict[str, torch.Tensor] | None = None
        self.whole: dict[Hashable, nn.Module] = {}
        self.holders: dict[Hashable, int] = {}

    def adopt(self, key: Hashable, base: nn.Module) -> nn.Module:
        """The module a client holding ``key`` uses: the shared one if present, else ``base`` (now shared)."""
        if key in self.whole:
            self.holders[key] += 1
            return self.whole[key]
        self.share_static(base)
        self.whole[key], self.holders[key] = base, 1
        return base

    def release(self, key: Hashable) -> None:
        self.holders[key] -= 1
        if self.holders[key] == 0:
            del self.whole[key], self.holders[key]

    def take(self, key: Hashable) -> nn.Module:
        """A private module for a client that stops sharing ``key`` (it is about to change it in place)."""
        base = self.whole[key]
        if self.holders[key] == 1:
            del self.whole[key], self.holders[key]
            return base
        self.holders[key] -= 1
        static = set(self.static or {})
        memo: dict[int, object] = {
            id(t): t for name, t in [*base.named_parameters(), *base.named_buffers()] if name in static
        }
        return copy.deepcopy(base, memo)  # the static tensors stay shared, everything else is copied

    def share_static(self, base: nn.Module) -> None:
        """Point ``base``'s static tensors at the process-wide copy (they are equal by construction)."""
        if not self.static:
            return
        state = base.state_dict()
        for name, value in self.static.items():
            if name in state and state[name] is not value and torch.equal(state[name], value):
                restore_static_tensor(base, name, value)


class FederatedClient:
    """A federated device: private data, a cached base model, and local LoRA training."""

    def __init__(
        self,
        client_id: int,
        data: TokenizedSplit | ShardView,
        num_threads: int,
        shared: ProcessModels | None = None,
        accelerator: str = "cpu",
        precision: str = "fp32",
    ) -> None:
        self.client_id = client_id
        self.data = data
        self.num_threads = max(1, num_threads)
        torch.set_num_threads(self.num_threads)
        self.device = compute_device(accelerator, client_id)
        self.precision = precision
        self.autocast_dtype = PRECISIONS[precision] if self.device.type == "cuda" else None
        if self.autocast_dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            log.warning("client %d: this GPU has no bf16; training in fp16 autocast instead", client_id)
            self.autocast_dtype = torch.float16
        #: a pool worker passes one state to all its clients; a dedicated actor has its own
        self.shared = shared if shared is not None else ProcessModels()
        self._base: nn.Module | None = None
        self._base_key: Hashable | None = None
        self._shared_key: Hashable | None = None  # set while ``_base`` is the shared copy of that key

    @property
    def _static(self) -> dict[str, torch.Tensor] | None:
        """Tensors no model version ever changes; one copy per process (``ProcessModels.static``)."""
        return self.shared.static

    @_static.setter
    def _static(self, value: dict[str, torch.Tensor] | None) -> None:
        if value is not None or self.shared.static is None:
            self.shared.static = value

    def ready(self) -> dict[str, Any]:
        """Called once after creation so the server can wait for (and time out on) actor start-up."""
        return {
            "client_id": self.client_id,
            "pid": os.getpid(),
            "num_samples": len(self.data),
            "node_id": node_id(),
            "device": str(self.device),
        }

    def export_state(self) -> dict[str, Any]:
        """What this device holds between rounds (its sub-model, its key, its static tensors), for checkpoints.

        A resumed run must give every device back the model it held, or the server would have to charge
        full downloads the uninterrupted run never made (fedspine_ray/runtime/checkpoint.py).
        """
        on_cpu = self.device.type == "cpu"
        base, static = self._base, self._static
        return {  # a GPU client's state crosses to the CPU: the server may have no GPU to unpickle it on
            "base": base if on_cpu or base is None else cpu_copy(base),
            "base_key": self._base_key,
            "static": static if on_cpu or static is None else to_cpu(static),
            "shared": self._shared_key is not None,
        }

    def import_state(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`export_state` returned (on a fresh actor of a resumed run).

        A base that was shared within a pool worker is shared again (it was one module there); a
        private (derived) one stays private, so every client's model is exactly what it was.
        """
        self._release_shared()
        on_cpu = self.device.type == "cpu"
        static = state["static"]
        self._static = (
            static if on_cpu or static is None else {k: v.to(self.device) for k, v in static.items()}
        )
        self._base, self._base_key = state["base"], state["base_key"]
        if self._base is not None:
            self._base.eval()
            if not on_cpu:  # moved tensor by tensor: point the static ones at the process copy again
                self._base = self._base.to(self.device)
                self.shared.share_static(self._base)
            if state.get("shared"):
                self._base, self._shared_key = self.shared.adopt(self._base_key, self._base), self._base_key

    def fit(self, task: FitTask, base: nn.Module | None, derivation: Derivation | None = None) -> FitResult:
        """Train LoRA (and the head) for ``task.local_steps`` steps on the local data.

        The base model arrives whole (``base``), as a :class:`Derivation` of the held one, or not at all
        when the held one is still current.
        """
        start = time.perf_counter()
        torch.set_num_threads(self.num_threads)  # a pool worker serves clients of one class: same count
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        if base is not None:
            if self._static is not None:
                restore_static(base, self._static)  # later downloads leave static tensors out
            base = base.to(self.device)  # arrives on the CPU (object store); a no-op for CPU clients
            if self._static is None:
                self._static = collect_static(base, task.static_names)
            self._release_shared()
            self._base, self._base_key = self.shared.adopt(task.base_key, base), task.base_key
            self._shared_key = task.base_key
        elif derivation is not None and self._base is not None:
            if self._shared_key is not None:  # copy-on-write: others in this process hold the same model
                self._base, self._shared_key = self.shared.take(self._shared_key), None
            for merge in derivation.merges:
                merge_lora_delta(self._base, merge)
            extend_and_select(self._base, derivation.plan, derivation.new_units)
            self._base_key = task.base_key
        if self._base is None or self._base_key != task.base_key:
            raise RuntimeError(
                f"client {self.client_id}: base model {task.base_key!r} was never sent; the server must "
                "send the base with the first task that uses it"
            )
        seed = int(np.random.SeedSequence([task.seed, self.client_id, task.round]).generate_state(1)[0])
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        # LoRA wraps the cached base in place and is stripped again afterwards (no merge): no second copy
        # of the model per device, which is what lets 16+ actors share a 24 GiB box.
        model = attach_lora(
            self._base,
            rank=task.rank,
            alpha=task.lora_alpha,
            dropout=task.lora_dropout,
            targets=task.lora_targets,
            trainable_modules=task.head_modules,
            # modules whose factors come at another rank than the task's (LEGEND's per-block ranks)
            rank_pattern={n: a.shape[0] for n, (a, _) in task.factors.items() if a.shape[0] != task.rank},
        )
        pruner = None
        try:
            load_factors(model, task.factors)
            load_module_state(model, task.head)
            train_start, cpu_start = time.perf_counter(), time.process_time()
            pruner = LocalPruner(model, task.local_pruning, task.local_steps) if task.local_pruning else None
            losses, tokens = self._train(model, task, rng, pruner)
            if cuda:
                torch.cuda.synchronize(self.device)  # the wall clock times the work, not its launch
            train_time, train_cpu = time.perf_counter() - train_start, time.process_time() - cpu_start
            factors, head = to_cpu(extract_factors(model)), to_cpu(module_state(model, task.head_modules))
            local_result = pruner.finish(factors) if pruner is not None else None
        finally:
            if pruner is not None:
                pruner.remove_hooks()  # masks must never outlive the fit (the base is kept)
            self._base = model.unload()
            self._base.eval()
            if self._shared_key is not None:  # unload returns the wrapped module; keep the share exact
                self.shared.whole[self._shared_key] = self._base
        return FitResult(
            client_id=self.client_id,
            round=task.round,
            num_samples=len(self.data),
            factors=factors,
            head=head,
            losses=losses,
            tokens_processed=tokens,
            wall_time_s=time.perf_counter() - start,
            train_time_s=train_time,
            train_cpu_s=train_cpu,
            local_pruning=local_result,
            node_id=node_id(),
            accelerator=self.device.type,
            gpu_memory_peak_bytes=int(torch.cuda.max_memory_allocated(self.device)) if cuda else 0,
        )

    def _release_shared(self) -> None:
        if self._shared_key is not None:
            self.shared.release(self._shared_key)
            self._shared_key = None

    def _train(
        self, model: nn.Module, task: FitTask, rng: np.random.Generator, pruner: LocalPruner | None = None
    ) -> tuple[list[float], int]:
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=task.lr, weight_decay=task.weight_decay)
        # fp16 gradients of small adapters underflow without loss scaling; bf16 has fp32's range
        scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype is torch.float16 else None
        losses: list[float] = []
        tokens = 0
        size = len(self.data)
        for step in range(task.local_steps):
            indices = rng.choice(size, size=task.batch_size, replace=size < task.batch_size)
            batch = self.data.batch(indices)
            if self.device.type != "cpu":
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with self._autocast():
                loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # the pruner's LoRA-gradient scores read true gradients
            else:
                loss.backward()
            if pruner is not None:
                pruner.after_backward()  # LoRA-gradient unit scores, from the gradients just computed
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if pruner is not None:
                pruner.end_of_step(step + 1)  # every few steps: remove the least important units
            losses.append(float(loss.detach()))
            tokens += int(batch["input_ids"].numel())
        return losses, tokens

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 / fp16 autocast on a GPU (``clients.precision``); nothing in fp32 or on CPUs."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def compute_device(accelerator: str, client_id: int) -> torch.device:
    """The device a client trains on: ``cuda`` when its process was given a GPU (Ray sets
    ``CUDA_VISIBLE_DEVICES``, so it is ``cuda:0`` of its process), else the CPU."""
    if accelerator != "cuda":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"client {client_id}: its device class asks for a GPU (num_gpus) but torch in this process sees none "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, torch {torch.__version__}); fix: "
            "install a CUDA build of torch on the GPU nodes, or set num_gpus: 0"
        )
    return torch.device("cuda", torch.cuda.current_device())
