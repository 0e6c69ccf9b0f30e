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

Two hooks, used by ``FederatedServer.evaluate`` and ``LoRAStrategy`` (importance for sub-models and for
global pruning):

* ``with backend.serving(model) as run: output = run(**batch)`` - forward passes. The model is consumed
  (under ZeRO-3 its parameters are partitioned in place), so pass a disposable copy such as
  ``Strategy.evaluation_model()``.
* ``backend.importance(model, method, batches)`` - unit importance; the model is left unchanged.

DeepSpeed in one process needs ``torch.distributed`` initialised: the backend sets
``MASTER_ADDR/MASTER_PORT`` (a free port, since several server actors can share a node under Ray Tune),
``RANK=0``, ``WORLD_SIZE=1``, ``LOCAL_RANK=0`` and initialises gloo (CPU accelerator) or NCCL (CUDA).
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
    """The global model's passes run as a plain module on the server's CPU (the default)."""

    name = "torch"

    @contextlib.contextmanager
    def serving(self, model: nn.Module) -> Iterator[Forward]:
        model.eval()
        yield model

    def importance(
        self, model: nn.Module, method: str, batches: Iterable[Mapping[str, Any]] | None
    ) -> UnitImportance:
        return compute_importance(model, method, batches)


class DeepSpeedBackend:
    """Evaluation and Taylor importance under a DeepSpeed ZeRO engine (``server.backend: deepspeed``).

    An engine is built per pass on the model handed in and destroyed afterwards: the evaluation model
    changes every round (adapters merged) and pruning changes the global model's shapes, so a long-lived
    engine would have to be rebuilt as often anyway.
    """

    name = "deepspeed"

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._deepspeed: Any = None

    # ----------------------------------------------------------------- set-up
    def _ds(self) -> Any:
        """Import DeepSpeed and initialise a one-process group (once per process)."""
        if self._deepspeed is not None:
            return self._deepspeed
        if self.config.num_gpus <= 0 or not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed is first imported
        import deepspeed
        from deepspeed.accelerator import get_accelerator
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=r".*is deprecated\. Please use `torch\.distributed")
        if not torch.distributed.is_initialized():
            os.environ.update(
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(free_port()),
                RANK="0",
                WORLD_SIZE="1",
                LOCAL_RANK="0",
            )
            deepspeed.init_distributed(
                dist_backend=get_accelerator().communication_backend_name(), verbose=False
            )
        self._deepspeed = deepspeed
        return deepspeed

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
        if batches is None:
            raise ValueError("taylor importance needs calibration batches (dicts with input_ids/labels)")
        grads = self._full_gradients(model, list(batches))
        named = dict(model.named_parameters())
        saved = {name: p.grad for name, p in named.items()}
        try:
            for name, p in named.items():
                p.grad = grads.get(name)
            return taylor_scores(model)
        finally:
            for name, p in named.items():
                p.grad = saved[name]

    def _full_gradients(self, model: nn.Module, batches: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """``d(sum of batch losses)/dw`` for every parameter, gathered from ZeRO's partitions.

        One backward of the summed loss (not one per batch): ZeRO-3 keeps accumulating gradient
        partitions across backward passes without a step, ZeRO-2 does not, and a single pass gives the
        same sum under both.
        """
        if not batches:
            raise ValueError("taylor importance got an empty batch iterable")
        from deepspeed.utils import safe_get_full_grad

        work = copy.deepcopy(model)  # the engine partitions it; the caller's model stays intact
        for p in work.parameters():
            p.requires_grad_(True)
        work.eval()  # no dropout: deterministic scores, as the torch backend
        with self._engine(work, train=True) as engine:
            loss = None
            for batch in batches:
                out = engine(**_to_device(batch, engine.device)).loss
                if out is None:
                    raise ValueError("model(**batch).loss is None: calibration batches need labels")
                loss = out if loss is None else loss + out
            engine.backward(loss)
            grads = {}
            for name, p in engine.module.named_parameters():
                grad = safe_get_full_grad(p)
                if grad is not None:
                    grads[name] = grad.detach().to("cpu", torch.float32).clone()
        del work
        return grads


ServerBackend = TorchBackend | DeepSpeedBackend


def build_backend(config: ServerConfig | None) -> ServerBackend:
    """The backend ``server.backend`` selects (torch when there is no server section)."""
    if config is None or config.backend == "torch":
        return TorchBackend()
    return DeepSpeedBackend(config)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
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
