"""The strategy interface: what a federated method decides each round, separated from how Ray runs it.

Shaped after Flower's ``Strategy``: the server asks the strategy to *configure* a round (which sub-model,
adapter and rank each selected client gets) and to *aggregate* what came back. The Ray runtime only
moves tensors and measures time, so a new method is one subclass registered in ``STRATEGIES``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fedspine_ray.config import ExperimentConfig
from fedspine_ray.messages import ClientAssignment, ClientOutcome, Derivation
from fedspine_ray.modeling.backend import ServerBackend, TorchBackend


@dataclass
class ServerContext:
    """What the server hands a strategy: the global model and facts about the task and clients."""

    config: ExperimentConfig
    global_model: nn.Module
    lora_targets: list[str]
    head_modules: list[str]
    client_num_samples: dict[int, int]
    calibration_batches: list[dict[str, torch.Tensor]]
    client_capacity: dict[int, float] = field(default_factory=dict)
    #: Runs the global model's evaluation passes and importance scoring (``server.backend``).
    backend: ServerBackend = field(default_factory=TorchBackend)
    #: The run's simulated clock (seconds since round 1 began); time-based pruning schedules read it.
    sim_clock_s: Callable[[], float] = field(default=lambda: 0.0)
    #: The base key the client holds now (None: nothing), as the server tracks it for its transfers; what a
    #: sub-model would make a device download depends on it.
    held_base: Callable[[int], Hashable | None] = field(default=lambda client_id: None)


class Strategy(ABC):
    """A federated fine-tuning method. Subclasses set ``name`` and implement the three hooks."""

    name: str = ""

    def setup(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    @abstractmethod
    def configure_round(self, rnd: int, client_ids: Sequence[int]) -> dict[int, ClientAssignment]:
        """Decide each selected client's sub-model, rank and starting adapter."""

    @abstractmethod
    def aggregate_round(self, rnd: int, outcomes: Sequence[ClientOutcome]) -> dict[str, float]:
        """Fold the round's outcomes into the global state; return extra per-round metrics."""

    @abstractmethod
    def evaluation_model(self) -> nn.Module:
        """A plain model (adapters merged, head loaded) on which the server measures test accuracy."""

    @abstractmethod
    def base_model(self, base_key: Hashable) -> nn.Module:
        """The (sub-)model an assignment's ``base_key`` names, as a device downloads it whole.

        Called once per distinct key per round (the server caches it for the round); the module may
        share tensors with the global model: the server only measures and serialises it.
        """

    def derivation(self, held_key: Hashable, target_key: Hashable) -> Derivation | None:
        """How a device holding ``held_key``'s model builds ``target_key``'s without a full download.

        ``None`` (the default): it downloads the target whole.
        """
        return None

    def global_metrics(self) -> dict[str, float]:
        """Per-round metrics describing the global model (sparsity, sizes); overridden by pruning methods."""
        return {"sparsity": 0.0}

    #: Attributes left out of :meth:`state_dict`: rebuilt every round, or not picklable (callables).
    #: ``ctx`` is always left out (the server rebuilds it); subclasses add their own transient names.
    transient_state: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        """Everything the strategy learned so far, for checkpoints (``fedspine run --resume``).

        Generic on purpose, so a new strategy is resumable without code: every instance attribute except
        ``ctx``, those named in ``transient_state`` and plain functions. The result is pickled together
        with the global model in one ``torch.save`` (fedspine_ray/runtime/checkpoint.py), so an attribute that
        refers to ``ctx.global_model`` or its tensors still does after loading.
        """
        skip = {"ctx", *self.transient_state}
        return {
            key: value
            for key, value in vars(self).items()
            if key not in skip and not (callable(value) and getattr(value, "__name__", "") == "<lambda>")
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s attributes; call after ``setup(ctx)`` with the resumed context."""
        for key, value in state.items():
            setattr(self, key, value)
