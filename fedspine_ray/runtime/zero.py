"""ZeRO that partitions: the server's DeepSpeed passes on ``server.num_ranks`` rank actors (one torch.distributed
group), with the server actor as the coordinator.

One process is one rank, and a one-rank ZeRO group partitions nothing (``WORLD_SIZE=1``: on a CPU it only
adds the engine's buffers). :class:`ZeroGroupBackend` starts ``N`` :class:`ZeroRank` actors, each asking Ray
for ``server.num_gpus`` (and no CPU, like the server), joins them into one group (gloo on CPUs, NCCL on GPUs,
rank 0's node address and a free port there) and runs the server's two heavy passes on it:

* evaluation (``serving``): the model goes to the object store once, every rank builds a ZeRO engine on it
  (stage 3 keeps 1/N of every parameter per rank and gathers a layer's weights while it computes), and each
  batch the server evaluates is split by rows across the ranks; the logits come back in row order and the
  loss as the rows' (or label tokens') weighted mean, so the task's evaluation code is unchanged;
* Taylor importance: the calibration batches are dealt round-robin to the ranks, each backpropagates the sum
  of its losses, ZeRO reduces the gradients across the group, and rank 0 returns the gathered full gradient
  (scaled from ZeRO's mean back to the sum), from which the server scores units as the torch backend does.

The results equal the torch backend's within float tolerance (``tests/test_server_backend.py``: 2 ranks on
CPU). It implements the same two hooks as :mod:`fedspine_ray.modeling.backend`'s backends, so the
strategies and the server do not know how many processes run a pass.
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import ray
import torch
from torch import nn

from fedspine_ray.config import ServerConfig
from fedspine_ray.modeling.backend import (
    DeepSpeedBackend,
    Forward,
    GroupSpec,
    ServerBackend,
    build_backend,
    free_port,
    taylor_batches,
    taylor_from_gradients,
)
from fedspine_ray.pruning import UnitImportance, compute_importance
from fedspine_ray.runtime.cpus import usable_cpus

__all__ = ["ZeroGroupBackend", "ZeroRank", "server_backend"]


def server_backend(config: ServerConfig, run_id: str) -> ServerBackend | ZeroGroupBackend:
    """The backend ``server`` selects: torch, a one-process DeepSpeed group, or ``num_ranks`` rank actors."""
    if config.backend == "deepspeed" and config.num_ranks > 1:
        return ZeroGroupBackend(config, run_id)
    return build_backend(config)


class ZeroRank:
    """One rank of the group: a :class:`~fedspine_ray.modeling.backend.DeepSpeedBackend` in its own process."""

    def __init__(self, config: ServerConfig, rank: int, world_size: int) -> None:
        self.config, self.rank, self.world_size = config, rank, world_size
        torch.set_num_threads(max(1, min(4, usable_cpus() // world_size)))
        self.backend: DeepSpeedBackend | None = None

    def address(self) -> tuple[str, int]:
        """Rank 0's address for the group: this node's IP and a port free on it."""
        return ray.util.get_node_ip_address(), free_port(bind="0.0.0.0")

    def join(self, master_addr: str, master_port: int) -> dict[str, Any]:
        """Join the group (collective: every rank at once); returns where this rank runs."""
        spec = GroupSpec(self.rank, self.world_size, master_addr, master_port)
        self.backend = DeepSpeedBackend(self.config, spec)
        return {"rank": self.rank, "accelerator": self.backend.accelerator, "node_id": _node_id()}

    def open_serving(self, model: nn.Module) -> None:
        self._backend().open_serving(model)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return self._backend().forward_local(batch)

    def close_serving(self) -> None:
        self._backend().close_serving()

    def partition(self) -> tuple[int, int]:
        """(parameters this rank holds, parameters of the model) of the open evaluation engine: what ZeRO-3
        partitioned (tests)."""
        engine = self._backend()._serving
        params = list(engine.module.parameters())
        local = sum(int(p.ds_tensor.numel()) if hasattr(p, "ds_tensor") else p.numel() for p in params)
        full = sum(int(p.ds_numel) if hasattr(p, "ds_numel") else p.numel() for p in params)
        return local, full

    def gradients(
        self, model: nn.Module, batches: list[Mapping[str, Any]], weights: list[float]
    ) -> dict[str, torch.Tensor] | None:
        return self._backend().local_gradients(model, batches, weights)

    def peak_gpu_memory(self) -> int:
        """Peak GPU memory torch allocated in this rank so far (0 on a CPU rank; benchmarks/gpu_check.py)."""
        return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else 0

    def _backend(self) -> DeepSpeedBackend:
        if self.backend is None:
            raise RuntimeError(f"ZeRO rank {self.rank} has not joined its group")
        return self.backend


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


class ZeroGroupBackend:
    """The server's passes on ``server.num_ranks`` :class:`ZeroRank` actors (module docstring)."""

    name = "deepspeed"

    def __init__(self, config: ServerConfig, run_id: str) -> None:
        self.config = config
        size = config.num_ranks
        options: dict[str, Any] = {"num_cpus": 0, "max_restarts": 0}
        if config.num_gpus > 0:
            options["num_gpus"] = config.num_gpus
        self.ranks = [
            ray.remote(ZeroRank)
            .options(name=f"fedspine-{run_id}-zero-rank-{r}", **options)
            .remote(config, r, size)
            for r in range(size)
        ]
        addr, port = ray.get(self.ranks[0].address.remote())
        #: where each rank runs (``accelerator``: cuda / cpu, ``node_id``)
        self.members: list[dict[str, Any]] = ray.get([rank.join.remote(addr, port) for rank in self.ranks])

    # ----------------------------------------------------------------- hooks
    @contextlib.contextmanager
    def serving(self, model: nn.Module) -> Iterator[Forward]:
        """Forward passes of ``model`` partitioned over the group; ``run(**batch)`` splits rows across ranks."""
        ref = ray.put(model)
        ray.get([rank.open_serving.remote(ref) for rank in self.ranks])
        try:
            yield self._forward
        finally:
            ray.get([rank.close_serving.remote() for rank in self.ranks])

    def _forward(self, **batch: Any) -> Any:
        rows = next(len(v) for v in batch.values() if torch.is_tensor(v))
        chunks = np.array_split(np.arange(rows), len(self.ranks))
        parts, weights = [], []
        for chunk in chunks:  # every rank runs one forward per batch; an empty share runs row 0, discarded
            index = torch.as_tensor(chunk if len(chunk) else [0], dtype=torch.long)
            parts.append({k: v[index] if torch.is_tensor(v) else v for k, v in batch.items()})
            weights.append(_loss_weight(parts[-1]) if len(chunk) else 0.0)
        outs = ray.get([rank.forward.remote(part) for rank, part in zip(self.ranks, parts, strict=True)])
        logits = torch.cat([o["logits"] for o, chunk in zip(outs, chunks, strict=True) if len(chunk)])
        losses = [
            (o["loss"], w) for o, w in zip(outs, weights, strict=True) if w > 0 and o["loss"] is not None
        ]
        loss = None
        if losses:
            total = sum(w for _, w in losses)
            loss = torch.tensor(sum(value * w for value, w in losses) / total)
        return types.SimpleNamespace(logits=logits, loss=loss)

    def importance(
        self, model: nn.Module, method: str, batches: Iterable[Mapping[str, Any]] | None
    ) -> UnitImportance:
        """Taylor scores from the group's gradients of the summed calibration losses (module docstring)."""
        if method != "taylor":
            return compute_importance(model, method, batches)
        data = taylor_batches(batches)
        size = len(self.ranks)
        per_rank = math.ceil(len(data) / size)
        ref = ray.put(model)
        calls = []
        for r, rank in enumerate(self.ranks):
            mine = data[r::size]
            weights = [1.0] * len(mine) + [0.0] * (per_rank - len(mine))  # equal forwards on every rank
            mine = mine + [data[0]] * (per_rank - len(mine))
            calls.append(rank.gradients.remote(ref, mine, weights))
        grads = ray.get(calls)[0]
        assert grads is not None  # rank 0 returns the gathered gradients
        return taylor_from_gradients(model, grads)

    def partitions(self, model: nn.Module) -> list[tuple[int, int]]:
        """(held, total) parameters per rank while ``model`` is being served (tests, benchmarks)."""
        with self.serving(model):
            return ray.get([rank.partition.remote() for rank in self.ranks])

    def close(self) -> None:
        for rank in self.ranks:
            ray.kill(rank)


def _loss_weight(batch: Mapping[str, Any]) -> float:
    """What a share's mean loss averages over: its rows, or for token-level labels (a causal LM) the label
    tokens the shifted loss counts."""
    labels = batch.get("labels")
    if not torch.is_tensor(labels):
        return float(len(next(v for v in batch.values() if torch.is_tensor(v))))
    if labels.dim() == 2:
        return float((labels[:, 1:] != -100).sum())
    return float(len(labels))
