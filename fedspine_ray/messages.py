"""Every type that crosses between the server, the strategies and the clients, in one place.

Like Flower's ``flwr.common``: the runtime (Ray actors) moves these objects and the strategies read and
write them, so neither package imports the other's internals. Plain dataclasses of tensors and numbers;
they are pickled by Ray between processes. Importing this module imports no torch (the launching process
unpickles :class:`RoundReport` from here and must stay small).

* :class:`ClientAssignment` - what a strategy decided for one client this round (strategy -> server);
* :class:`Derivation` - how a device turns the sub-model it holds into its new one (server -> client);
* :class:`FitTask` / :class:`FitResult` - one round of local training (server -> client -> server);
* :class:`ClientOutcome` with :class:`ClientMetrics` - what the server learned about a client this round
  (server -> strategy, and the client's row of clients.parquet);
* :class:`RoundReport` - one round's rows (server -> launching process).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # torch stays unimported: the launching process unpickles RoundReports from here
    import torch

    from fedspine_ray.devices.profiles import DeviceConditions
    from fedspine_ray.pruning.local import LocalPruningResult, LocalPruningTask
    from fedspine_ray.pruning.lora_mapping import Factors
    from fedspine_ray.pruning.plan import PruningPlan

__all__ = [
    "ClientAssignment",
    "ClientMetrics",
    "ClientOutcome",
    "Derivation",
    "FitResult",
    "FitTask",
    "RoundReport",
    "model_bytes",
    "tensor_bytes",
]

#: Statuses of a client's round, as clients.parquet records them (docs/results.md). ``unplaceable``: selected,
#: but no live node of the cluster can host its process (its node was lost); not sent, not given to the strategy.
Status = Literal["ok", "straggler", "oom", "rejected", "actor_died", "unplaceable"]


def tensor_bytes(tree: object) -> int:
    """Bytes of all tensors in a nested dict/list/tuple (what a transfer of it costs)."""
    import torch

    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, Mapping):
        return sum(tensor_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tensor_bytes(v) for v in tree)
    return 0


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of a whole model download (every parameter and buffer)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


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
    """One client's job for a round, as its strategy decided it.

    ``base_key`` names the (sub-)model: the server asks the strategy for that model
    (``Strategy.base_model``) or for a derivation from the one the client holds (``Strategy.derivation``);
    clients holding the same key are not sent it again, and each distinct key is put in Ray's object
    store once per round. ``factors`` are in the sub-model's coordinates with scaling folded into B.
    """

    base_key: Hashable
    rank: int
    factors: Factors
    head: dict[str, torch.Tensor]
    pruning_ratio: float = 0.0
    arm: int | None = None
    #: Ratio of the sub-model actually sent when the device prunes the rest itself (``pruning.where:
    #: client``); None means ``pruning_ratio``. ``pruning_ratio`` is always the ratio the device ends at.
    submodel_ratio: float | None = None
    #: Units the device removes during local training (None: no device-side pruning).
    local_pruning: LocalPruningTask | None = None
    #: Optimiser steps this round (None: ``training.local_steps``); raised by ``rounds.fill`` for devices
    #: that would otherwise wait on the round's slowest device.
    local_steps: int | None = None
    #: The exact (full) names of the Linears this client trains adapters on, None: every LoRA target. A client
    #: with a subset (LEGEND's top-k blocks, strategies/legend.py) gets and returns ``factors`` for these only;
    #: their ranks may differ per module (``factors``' shapes say them).
    lora_modules: list[str] | None = None

    def steps(self, default: int) -> int:
        """Optimiser steps this round: ``local_steps``, else ``default`` (``training.local_steps``)."""
        return self.local_steps or default

    @property
    def base_ratio(self) -> float:
        return self.pruning_ratio if self.submodel_ratio is None else self.submodel_ratio


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
    #: device-side pruning during this fit (``pruning.where: client``), None for none
    local_pruning: LocalPruningTask | None = None


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
    #: seconds inside the local training steps (forward/backward/optimizer); the rest of ``wall_time_s`` is
    #: deriving the model, wrapping it in PEFT and extracting factors (benchmarks/bench_scale.py)
    train_time_s: float = 0.0
    #: CPU seconds this process spent in those steps: unlike ``train_time_s`` it does not grow when more
    #: client processes than cores time-share the CPUs
    train_cpu_s: float = 0.0
    #: what device-side pruning removed and its unit scores (None when the task asked for none)
    local_pruning: LocalPruningResult | None = None
    #: the Ray node the client ran on ("" outside Ray)
    node_id: str = ""
    #: ``cpu`` or ``cuda``: where it trained
    accelerator: str = "cpu"
    #: peak GPU memory torch allocated in the client's process during the fit (0 on CPUs)
    gpu_memory_peak_bytes: int = 0


@dataclass
class ClientMetrics:
    """What the server charged and measured for one client in one round (its clients.parquet columns).

    Typed, so a misspelt metric is an AttributeError rather than a silently missing column. Costs known
    before the round (bytes, FLOPs, memory) are set at dispatch; measured ones when the reply arrives;
    simulated times when the clock closes the round (devices/timer.py).
    """

    bytes_down: int = 0
    bytes_up: int = 0
    #: how the base model reached the device: ``full`` download, ``derived`` from the held one, ``cached``
    base_transfer: str = "none"
    flops_per_token: float = math.nan
    memory_required_bytes: int = 0
    memory_available_bytes: int = 0
    trainable_params: int = 0
    model_params: int = 0
    tokens_processed: int = 0
    train_time_s: float = 0.0
    train_cpu_s: float = 0.0
    units_pruned_on_device: int = 0
    sim_compute_s: float = math.nan
    sim_download_s: float = math.nan
    sim_upload_s: float = math.nan
    sim_idle_s: float = math.nan
    reward: float = math.nan
    #: the bandit reward's terms (FedSpine's multi-term reward), for analysis
    reward_terms: dict[str, float] = field(default_factory=dict)
    #: the Ray node of the client's process: where it ran, or (lost, never sent) where it was placed
    node_id: str = ""
    #: ``cpu`` / ``cuda`` where the client trained ("" when it did not reply)
    accelerator: str = ""
    #: peak GPU memory of the client's process during its fit (0 on CPUs)
    gpu_memory_peak_bytes: int = 0

    @property
    def sim_transfer_s(self) -> float:
        return self.sim_download_s + self.sim_upload_s


@dataclass
class ClientOutcome:
    """What the server learned about one client in a round (successful or not).

    The status is decided in one place (:attr:`status`) from the facts the round records: whether the task
    fit the device's memory (dispatch), whether the reply failed (collect), whether it came after the
    deadline (the clock).
    """

    client_id: int
    assignment: ClientAssignment
    num_samples: int
    factors: Factors | None = None
    head: dict[str, torch.Tensor] | None = None
    loss_first: float = math.nan
    loss_last: float = math.nan
    loss_mean: float = math.nan
    sim_time_s: float = math.nan
    wall_time_s: float = math.nan
    metrics: ClientMetrics = field(default_factory=ClientMetrics)
    #: False: the task did not fit the device's memory this round and was not sent
    fits_memory: bool = True
    #: the reply's failure: its process died, or its update was malformed
    failure: Literal["actor_died", "rejected", "unplaceable"] | None = None
    #: why an update was rejected (the validation message)
    error: str | None = None
    #: finished after the round's deadline (``rounds.end: deadline``)
    late: bool = False
    #: a late update is still aggregated (``rounds.count_stragglers``)
    late_counts: bool = False
    #: the device's conditions this round (None without device profiles: wall clock)
    conditions: DeviceConditions | None = None
    #: device-side pruning's report (``pruning.where: client``)
    local_pruning: LocalPruningResult | None = None

    @property
    def status(self) -> Status:
        """``oom``, ``actor_died`` / ``rejected``, ``straggler`` (late and not counted) or ``ok``."""
        if not self.fits_memory:
            return "oom"
        if self.failure is not None:
            return self.failure
        if self.late and not self.late_counts:
            return "straggler"
        return "ok"

    @property
    def failed(self) -> bool:
        """The device could not run its task (the bandit's failure reward): out of memory, crash, rejected."""
        return self.status in ("oom", "rejected", "actor_died")

    @property
    def usable(self) -> bool:
        return self.status == "ok" and self.factors is not None


@dataclass
class RoundReport:
    """Rows produced by one round: one for the round, one per selected client (plain Python values)."""

    round_row: dict[str, Any]
    client_rows: list[dict[str, Any]]
