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

from fedspine_ray.adapters import Factors, tensor_bytes
from fedspine_ray.config import ExperimentConfig
from fedspine_ray.local_pruning import LocalPruningTask
from fedspine_ray.pruning import PruningPlan
from fedspine_ray.server_backend import ServerBackend, TorchBackend


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


@dataclass
class Derivation:
    """How a device turns the sub-model it holds into the one it is assigned, without downloading it.

    Apply ``merges`` (adapters merged into the global base since the held version, already sliced to the
    held sub-model's coordinates) in order, append ``new_units`` (weights of the units the device lacks,
    per prunable Linear) and keep ``plan``'s units (indices into held + appended units). Only these
    low-rank factors, the missing units and index lists cross the network.
    """

    merges: list[Factors]
    plan: PruningPlan
    new_units: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        indices = sum(len(v) for v in self.plan.attention.values())
        indices += sum(len(v) for v in self.plan.mlp.values())
        return tensor_bytes(self.merges) + tensor_bytes(self.new_units) + 4 * indices


@dataclass
class ClientAssignment:
    """One client's job for a round.

    ``base_key`` names the (sub-)model: clients holding a base with the same key are not sent it again,
    and each distinct key is put in Ray's object store once per round, whatever the number of clients.
    ``factors`` are in the sub-model's coordinates with scaling folded into B.
    """

    base_key: Hashable
    build_base: Callable[[], nn.Module]
    rank: int
    factors: Factors
    head: dict[str, torch.Tensor]
    pruning_ratio: float = 0.0
    arm: int | None = None
    #: Given the key of the base a client holds, how to derive this base from it (None: download it).
    derive: Callable[[Hashable], Derivation | None] | None = None
    #: Ratio of the sub-model actually sent when the device prunes the rest itself (``pruning.where:
    #: client``); None means ``pruning_ratio``. ``pruning_ratio`` is always the ratio the device ends at.
    submodel_ratio: float | None = None
    #: Units the device removes during local training (None: no device-side pruning).
    local_pruning: LocalPruningTask | None = None
    #: Optimiser steps this round (None: ``training.local_steps``); FedSpine's ``bandit.fill_budget``
    #: raises it for devices that would otherwise wait on the round's slowest device.
    local_steps: int | None = None

    def steps(self, default: int) -> int:
        """Optimiser steps this round: ``local_steps``, else ``default`` (``training.local_steps``)."""
        return self.local_steps or default

    @property
    def base_ratio(self) -> float:
        return self.pruning_ratio if self.submodel_ratio is None else self.submodel_ratio


@dataclass
class ClientOutcome:
    """What the server learned about one client in a round (successful or not)."""

    client_id: int
    assignment: ClientAssignment
    status: str  # "ok", "straggler", "oom", "rejected", "actor_died"
    num_samples: int
    factors: Factors | None = None
    head: dict[str, torch.Tensor] | None = None
    loss_first: float = float("nan")
    loss_last: float = float("nan")
    loss_mean: float = float("nan")
    sim_time_s: float = float("nan")
    wall_time_s: float = float("nan")
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.status == "ok" and self.factors is not None


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
        with the global model in one ``torch.save`` (fedspine_ray/checkpoint.py), so an attribute that
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


def weighted_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weighted_mean: weights must sum to a positive number")
    return sum(t * (w / total) for t, w in zip(tensors, weights, strict=True))


def average_states(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Sample-weighted FedAvg of same-shaped tensor dicts (used for the full classification head)."""
    return {key: weighted_mean([s[key] for s in states], weights) for key in states[0]}
