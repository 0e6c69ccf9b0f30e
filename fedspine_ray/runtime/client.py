"""The device side: one Ray actor per client, holding its private data and training LoRA locally.

The class is plain Python (tests can run it in-process); the server turns it into an actor with
``ray.remote(FederatedClient).options(num_cpus=..., memory=..., resources=...)`` per device.
"""

from __future__ import annotations

import os
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedspine_ray.adapters import (
    Factors,
    attach_lora,
    extract_factors,
    load_factors,
    load_module_state,
    module_state,
)
from fedspine_ray.data.tokens import TokenizedSplit
from fedspine_ray.pruning import extend_and_select, merge_lora_delta
from fedspine_ray.runtime.transfer import collect_static, restore_static
from fedspine_ray.strategies.base import Derivation


@dataclass
class FitTask:
    """Everything a client needs for one round besides the base model (sent separately when it changes)."""

    round: int
    base_key: Hashable
    rank: int
    factors: Factors
    head: dict[str, torch.Tensor]
    local_steps: int
    batch_size: int
    lr: float
    weight_decay: float
    lora_alpha: float
    lora_dropout: float
    lora_targets: list[str]
    head_modules: list[str]
    seed: int
    static_names: list[str] = field(default_factory=list)


@dataclass
class FitResult:
    """A client's reply: its adapter (sub-model coordinates), head, losses and how much work it did."""

    client_id: int
    round: int
    num_samples: int
    factors: Factors
    head: dict[str, torch.Tensor]
    losses: list[float]
    tokens_processed: int
    wall_time_s: float


class FederatedClient:
    """A federated device: private data, a cached base model, and local LoRA training."""

    def __init__(self, client_id: int, data: TokenizedSplit, num_threads: int) -> None:
        self.client_id = client_id
        self.data = data
        torch.set_num_threads(max(1, num_threads))
        self._base: nn.Module | None = None
        self._base_key: Hashable | None = None
        self._static: dict[str, torch.Tensor] | None = None  # tensors no model version ever changes

    def ready(self) -> dict[str, int]:
        """Called once after creation so the server can wait for (and time out on) actor start-up."""
        return {"client_id": self.client_id, "pid": os.getpid(), "num_samples": len(self.data)}

    def fit(self, task: FitTask, base: nn.Module | None, derivation: Derivation | None = None) -> FitResult:
        """Train LoRA (and the head) for ``task.local_steps`` steps on the local data.

        The base model arrives whole (``base``), as a :class:`Derivation` of the held one, or not at all
        when the held one is still current.
        """
        start = time.perf_counter()
        if base is not None:
            if self._static is None:
                self._static = collect_static(base, task.static_names)
            else:
                restore_static(base, self._static)  # later downloads leave static tensors out
            self._base, self._base_key = base, task.base_key
        elif derivation is not None and self._base is not None:
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
        )
        try:
            load_factors(model, task.factors)
            load_module_state(model, task.head)
            losses, tokens = self._train(model, task, rng)
            factors, head = extract_factors(model), module_state(model, task.head_modules)
        finally:
            self._base = model.unload()
            self._base.eval()
        return FitResult(
            client_id=self.client_id,
            round=task.round,
            num_samples=len(self.data),
            factors=factors,
            head=head,
            losses=losses,
            tokens_processed=tokens,
            wall_time_s=time.perf_counter() - start,
        )

    def _train(self, model: nn.Module, task: FitTask, rng: np.random.Generator) -> tuple[list[float], int]:
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=task.lr, weight_decay=task.weight_decay)
        losses: list[float] = []
        tokens = 0
        size = len(self.data)
        for _ in range(task.local_steps):
            indices = rng.choice(size, size=task.batch_size, replace=size < task.batch_size)
            batch = self.data.batch(indices)
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            tokens += int(batch["input_ids"].numel())
        return losses, tokens
