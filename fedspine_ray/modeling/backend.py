"""How the server actor runs the heavy work on its global model: plain torch, or DeepSpeed ZeRO.

The strategies keep the global model as a plain ``nn.Module`` in host memory: every round they read its
full weights many times (sub-model extraction, unit slices for devices, broadcast through Ray's object
store) and change its structure (LoRA merge + pruning surgery replaces Linear modules). A server is a
single process, so under ZeRO its one rank would own every partition anyway; what ZeRO adds is *where*
the compute-heavy passes run and what they keep resident: forward passes for evaluation and the full
backward pass of Taylor importance run inside a DeepSpeed engine (stage 2 or 3), which with
``server.offload: cpu`` keeps parameters/optimizer state in host memory and streams them to the
accelerator layer by layer. Those passes are exactly the ones that need activation + gradient memory the
size of the model, so they are what must fit the server's GPU.

Two hooks, used by ``FederatedServer._evaluate_model`` and ``LoRAStrategy`` (importance for sub-models and for
global pruning):

* ``with backend.serving(model) as run: output = run(**batch)`` - forward passes. The model is consumed
  (under ZeRO-3 its parameters are partitioned in place), so pass a disposable copy such as
  ``Strategy.evaluation_model()``.
* ``backend.importance(model, method, batches)`` - unit importance; the model is left unchanged.

DeepSpeed in one process needs ``torch.distributed`` initialised: the backend sets
``MASTER_ADDR/MASTER_PORT`` (a free port, since several server actors can share a node under Ray Tune),
``RANK=0``, ``WORLD_SIZE=1``, ``LOCAL_RANK=0`` and initialises gloo (CPU accelerator) or NCCL (CUDA). Ranks
of a larger group get their rank, the world size and rank 0's address from the coordinator
(:class:`GroupSpec`).

With ``server.num_ranks: 1`` the server actor is the group's one rank, so ZeRO partitions nothing. With ``N``
> 1 the passes run on N rank processes (``fedspine_ray/runtime/zero.py`` starts them as Ray actors), each
holding one :class:`DeepSpeedBackend` of the same group: stage 3 keeps 1/N of every parameter per rank, each
rank runs its share of the rows (:meth:`DeepSpeedBackend.open_serving` / :meth:`~DeepSpeedBackend.forward_local`)
or of the calibration batches (:meth:`DeepSpeedBackend.local_gradients`), and the parts add up to what one
process computes.

The accelerator is decided in the process that runs the passes, before DeepSpeed is imported: CUDA when
the process was given a GPU (``server.num_gpus``) and torch sees one, else CPU. It is not taken from an
environment the launcher fills in for every worker: a ``DS_ACCELERATOR=cpu`` forced there made a server
that Ray gave a GPU run DeepSpeed on its CPU accelerator.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import os
import socket
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedspine_ray.config import ServerConfig
from fedspine_ray.pruning import UnitImportance, compute_importance
from fedspine_ray.pruning.importance import taylor_scores

log = logging.getLogger("fedspine_ray.modeling.backend")

#: A model, or the backend's forward callable (``backend.serving``): ``forward(**batch)`` -> model output.
Forward = Callable[..., Any]


class TorchBackend:
    """The global model's passes run as a plain module on the server's CPU (the default).

    ``eval_dtype`` (``server.eval_dtype``) is the dtype evaluation runs in: the served model is a disposable copy,
    so it is cast in place. Importance passes always run in the model's own dtype (float32): their gradients
    rank units, and bfloat16 would reorder near-ties.
    """

    name = "torch"

    def __init__(self, eval_dtype: torch.dtype = torch.float32) -> None:
        self.eval_dtype = eval_dtype

    @contextlib.contextmanager
    def serving(self, model: nn.Module) -> Iterator[Forward]:
        model.eval()
        if self.eval_dtype != torch.float32:
            model.to(self.eval_dtype)
        yield model

    def importance(
        self, model: nn.Module, method: str, batches: Iterable[Mapping[str, Any]] | None
    ) -> UnitImportance:
        return compute_importance(model, method, batches)

    def close(self) -> None:
        """Nothing to release (a DeepSpeed rank group holds processes)."""


@dataclass(frozen=True)
class GroupSpec:
    """Where one rank sits in a DeepSpeed group: its rank, the group's size and rank 0's address."""

    rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 0  # 0: a free local port (a one-process group)


def use_cuda(config: ServerConfig) -> bool:
    """Whether this process runs DeepSpeed on CUDA: it was given a GPU and torch sees one."""
    return config.num_gpus > 0 and torch.cuda.is_available()


class DeepSpeedBackend:
    """Evaluation and Taylor importance under a DeepSpeed ZeRO engine (``server.backend: deepspeed``).

    An engine is built per pass on the model handed in and destroyed afterwards: the evaluation model
    changes every round (adapters merged) and pruning changes the global model's shapes, so a long-lived
    engine would have to be rebuilt as often anyway.
    """

    name = "deepspeed"

    def __init__(self, config: ServerConfig, group: GroupSpec | None = None) -> None:
        self.config = config
        self.group = group or GroupSpec()
        self._deepspeed: Any = None
        self._serving: Any = None  # a rank's open evaluation engine (open_serving .. close_serving)
        self._serving_scope: Any = None

    # ----------------------------------------------------------------- set-up
    def _ds(self) -> Any:
        """Import DeepSpeed on this process's accelerator and initialise its group (once per process)."""
        if self._deepspeed is not None:
            return self._deepspeed
        accelerator = "cuda" if use_cuda(self.config) else "cpu"
        os.environ["DS_ACCELERATOR"] = accelerator  # read when deepspeed is first imported in this process
        import deepspeed
        from deepspeed.accelerator import get_accelerator, set_accelerator
        from deepspeed.utils import logger as ds_logger

        if get_accelerator().device_name() != accelerator:  # imported earlier here with another accelerator
            if accelerator == "cuda":
                from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator as Accelerator
            else:
                from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator as Accelerator
            set_accelerator(Accelerator())
        ds_logger.setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=r".*is deprecated\. Please use `torch\.distributed")
        if not torch.distributed.is_initialized():
            group = self.group
            os.environ.update(
                MASTER_ADDR=group.master_addr,
                MASTER_PORT=str(group.master_port or free_port()),
                RANK=str(group.rank),
                WORLD_SIZE=str(group.world_size),
                LOCAL_RANK="0",  # each rank is a process of its own, with at most its own GPU (its cuda:0)
            )
            deepspeed.init_distributed(
                dist_backend=get_accelerator().communication_backend_name(), verbose=False
            )
        self._deepspeed = deepspeed
        return deepspeed

    @property
    def accelerator(self) -> str:
        """``cuda`` or ``cpu``: what DeepSpeed runs on in this process (imports it and joins the group)."""
        from deepspeed.accelerator import get_accelerator

        self._ds()
        return str(get_accelerator().device_name())

    def ds_config(self, train: bool, hidden_size: int | None = None) -> dict[str, Any]:
        """The DeepSpeed config of one pass; ``train`` adds the (never stepped) optimizer ZeRO needs to
        hold gradients.

        Communication buckets are sized from ``hidden_size`` as the Hugging Face integration's ``auto``
        does: DeepSpeed's defaults (5e8 elements, 2 GB in fp32) would dwarf a small server model.
        """
        zero: dict[str, Any] = {"stage": self.config.zero_stage}
        if hidden_size:
            bucket = hidden_size * hidden_size
            zero.update(reduce_bucket_size=bucket, allgather_bucket_size=bucket)
            if self.config.zero_stage == 3:
                zero.update(
                    stage3_prefetch_bucket_size=int(0.9 * bucket),
                    stage3_param_persistence_threshold=10 * hidden_size,
                )
        if self.config.offload == "cpu":
            if self.config.zero_stage == 3:
                zero["offload_param"] = {"device": "cpu"}
            if train:
                zero["offload_optimizer"] = {"device": "cpu"}
        config: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "zero_optimization": zero,
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }
        if train:
            # lr 0 and never stepped: ZeRO only partitions and reduces gradients through an optimizer.
            config["zero_allow_untested_optimizer"] = True
            config["zero_force_ds_cpu_optimizer"] = False
        return config

    @contextlib.contextmanager
    def _engine(self, model: nn.Module, train: bool) -> Iterator[Any]:
        deepspeed = self._ds()
        train = train or self.config.zero_stage < 3  # ZeRO-2 engines refuse to start without an optimizer
        optimizer = (
            torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0) if train else None
        )
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        engine, *_ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            config=self.ds_config(train, hidden if isinstance(hidden, int) else None),
        )
        try:
            yield engine
        finally:
            engine.destroy()
            del engine
            gc.collect()

    # ----------------------------------------------------------------- hooks
    @contextlib.contextmanager
    def serving(self, model: nn.Module) -> Iterator[Forward]:
        model.eval()
        with self._engine(model, train=False) as engine:
            engine.eval()

            def run(**batch: Any) -> Any:
                return _to_cpu(engine(**_to_device(batch, engine.device)))

            yield run

    def importance(
        self, model: nn.Module, method: str, batches: Iterable[Mapping[str, Any]] | None
    ) -> UnitImportance:
        """Taylor scores from one backward pass under ZeRO; data-free methods need no engine."""
        if method != "taylor":
            return compute_importance(model, method, batches)
        return taylor_from_gradients(model, self._full_gradients(model, taylor_batches(batches)))

    def _full_gradients(self, model: nn.Module, batches: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """``d(sum of batch losses)/dw`` for every parameter, gathered from ZeRO's partitions.

        One backward of the summed loss (not one per batch): ZeRO-3 keeps accumulating gradient
        partitions across backward passes without a step, ZeRO-2 does not, and a single pass gives the
        same sum under both.
        """
        grads = self.local_gradients(model, batches, [1.0] * len(batches))
        assert grads is not None  # a one-process group's rank 0
        return grads

    def local_gradients(
        self, model: nn.Module, batches: list[Mapping[str, Any]], weights: list[float]
    ) -> dict[str, torch.Tensor] | None:
        """This rank's part of ``d(sum of weight x batch loss)/dw``: the group's full gradients on rank 0,
        None on the other ranks.

        Every rank of the group calls it with the same number of batches (the collectives run per forward
        and backward): a rank with fewer real batches pads with copies weighted 0. ZeRO averages gradients
        over the ranks, so the gathered gradient is scaled by the world size back to the sum.
        """
        from deepspeed.utils import safe_get_full_grad

        work = copy.deepcopy(model)  # the engine partitions it; the caller's model stays intact
        for p in work.parameters():
            p.requires_grad_(True)
        work.eval()  # no dropout: deterministic scores, as the torch backend
        grads: dict[str, torch.Tensor] = {}
        scale = float(self.group.world_size)
        with self._engine(work, train=True) as engine:
            loss = None
            for batch, weight in zip(batches, weights, strict=True):
                out = engine(**_to_device(batch, engine.device)).loss
                if out is None:
                    raise ValueError("model(**batch).loss is None: calibration batches need labels")
                out = out if weight == 1.0 else out * weight
                loss = out if loss is None else loss + out
            engine.backward(loss)
            for name, p in engine.module.named_parameters():
                grad = safe_get_full_grad(p)  # a collective under ZeRO-3: every rank, same order
                if grad is not None and self.group.rank == 0:
                    grads[name] = grad.detach().to("cpu", torch.float32).clone()
                    if scale != 1.0:
                        grads[name] *= scale
        del work
        return grads if self.group.rank == 0 else None

    # ----------------------------------------------------------------- a rank of a larger group
    def open_serving(self, model: nn.Module) -> None:
        """Build this rank's evaluation engine on ``model`` (collective: every rank of the group at once)."""
        self.close_serving()
        model.eval()
        self._serving_scope = self._engine(model, train=False)
        self._serving = self._serving_scope.__enter__()
        self._serving.eval()

    def forward_local(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """One forward of this rank's rows (collective): the logits on the CPU and the mean loss, if any."""
        with torch.no_grad():
            out = self._serving(**_to_device(batch, self._serving.device))
        loss = getattr(out, "loss", None)
        return {"logits": out.logits.detach().float().cpu(), "loss": None if loss is None else float(loss)}

    def close_serving(self) -> None:
        """Destroy this rank's evaluation engine, if one is open."""
        if self._serving is not None:
            self._serving = None
            scope, self._serving_scope = self._serving_scope, None
            scope.__exit__(None, None, None)

    def close(self) -> None:
        self.close_serving()


ServerBackend = TorchBackend | DeepSpeedBackend


def taylor_batches(batches: Iterable[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    """The calibration batches a distributed Taylor pass needs, as a list; missing or empty ones fail here,
    once for every backend, rather than as a hang or a zero gradient inside an engine or a rank group."""
    if batches is None:
        raise ValueError("taylor importance needs calibration batches (dicts with input_ids/labels)")
    data = list(batches)
    if not data:
        raise ValueError("taylor importance got an empty batch iterable")
    return data


def taylor_from_gradients(model: nn.Module, grads: Mapping[str, torch.Tensor]) -> UnitImportance:
    """Taylor unit scores of ``model`` from full gradients computed elsewhere (a ZeRO engine, a rank group);
    the model's own ``.grad`` are left as they were."""
    named = dict(model.named_parameters())
    saved = {name: p.grad for name, p in named.items()}
    try:
        for name, p in named.items():
            p.grad = grads.get(name)
        return taylor_scores(model)
    finally:
        for name, p in named.items():
            p.grad = saved[name]


def build_backend(config: ServerConfig | None) -> ServerBackend:
    """The backend ``server.backend`` selects (torch when there is no server section)."""
    if config is None:
        return TorchBackend()
    if config.backend == "torch":
        return TorchBackend(getattr(torch, config.eval_dtype))
    return DeepSpeedBackend(config)


def free_port(bind: str = "127.0.0.1") -> int:
    """A TCP port free on this machine (``bind="0.0.0.0"``: for a group whose other ranks are on other nodes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((bind, 0))
        return int(sock.getsockname()[1])


def _to_device(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _to_cpu(output: Any) -> Any:
    """Model outputs back on the CPU, where the server compares them with labels."""
    if hasattr(output, "keys"):
        for key in list(output.keys()):
            if torch.is_tensor(output[key]) and output[key].device.type != "cpu":
                output[key] = output[key].cpu()
    return output
