"""The server: a Ray actor that owns the global model, the clients and the round loop.

The CLI process only creates this actor and polls it round by round for progress; everything that
touches the model (selection, broadcast through the object store, aggregation, evaluation) happens here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import uuid
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import OutOfMemoryError, RayActorError, WorkerCrashedError
from torch import nn

from fedspine_ray.adapters import linear_shapes, model_bytes, tensor_bytes
from fedspine_ray.aggregation import InvalidUpdateError, validate_update
from fedspine_ray.config import ExperimentConfig, config_from_dict
from fedspine_ray.data import partition_indices
from fedspine_ray.data.tokens import TokenizedSplit
from fedspine_ray.models import (
    head_module_names,
    load_tokenizer,
    lora_targets,
    resolve_model_path,
)
from fedspine_ray.runtime.client import FitResult, FitTask
from fedspine_ray.runtime.device_sim import ClientDevice, DeviceTimer, build_client_devices
from fedspine_ray.runtime.idle_priority import IdlePriorityThread
from fedspine_ray.runtime.pool import (
    DedicatedRuntime,
    PooledRuntime,
    pool_sizes,
    resolve_placement,
    wait_until_ready,
    worker_devices,
)
from fedspine_ray.runtime.server_actor import RoundReport
from fedspine_ray.runtime.transfer import static_tensor_names, strip_static
from fedspine_ray.server_backend import build_backend
from fedspine_ray.strategies import ClientAssignment, ClientOutcome, ServerContext, build_strategy
from fedspine_ray.tasks import build_task, majority_accuracy
from fedspine_ray.time_budget import predicted_fedit_time

log = logging.getLogger("fedspine_ray.server")
#: Simulated-time breakdown of each client's round (DeviceTimer.close_round): download + compute + upload =
#: ``sim_time_s``; ``sim_idle_s`` is the wait for the round's slowest device. NaN where not measured.
SIM_TIME_COLUMNS = ("sim_download_s", "sim_compute_s", "sim_upload_s", "sim_idle_s")


@dataclass
class InFlightRound:
    """A dispatched round: the replies still to collect and what validating them needs."""

    round: int
    pending: dict[ray.ObjectRef, int]
    outcomes: dict[int, ClientOutcome]
    bases: dict[Hashable, nn.Module]
    configure_s: float = 0.0
    dispatch_s: float = 0.0
    wait_s: float = 0.0
    #: Configured and dispatched by the previous round's call, while that round was evaluated.
    started_early: bool = False


class BasePayload:
    """A base model as downloaded by devices: its size, and one object-store copy made on first use."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.nbytes = model_bytes(model)
        self._ref: ray.ObjectRef | None = None

    def ref(self) -> ray.ObjectRef:
        if self._ref is None:
            self._ref = ray.put(self.model)
        return self._ref


class FederatedServer:
    """Holds the global model and strategy, drives client actors, evaluates after every round."""

    def __init__(self, config_dict: dict[str, Any]) -> None:
        self.config: ExperimentConfig = config_from_dict(config_dict)
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        self.sim_clock_s = 0.0
        self.wall_start = time.perf_counter()
        self.client_base: dict[int, Hashable] = {}
        self.dead_clients: set[int] = set()
        #: Client actors are named ``fedspine-<run_id>-client-<id>`` so operators can find them in Ray.
        self.run_id = uuid.uuid4().hex[:8]
        self._inflight: InFlightRound | None = None
        self._last_report_end = time.perf_counter()
        self._overlap_evaluation = bool(self.config.runtime.overlap_evaluation)  # null: decided in setup
        self._idle_evaluator: IdlePriorityThread | None = None  # overlapped evaluations run on it

    # ----------------------------------------------------------------- set-up
    def setup(self) -> dict[str, Any]:
        """Load model and data, partition, create client actors; returns a summary for the console."""
        cfg = self.config
        model_dir = resolve_model_path(cfg.model.path)
        self.task = build_task(cfg)  # classification or causal_lm: data rendering, model kind, evaluation
        data = self.task.prepare(cfg, load_tokenizer(model_dir))
        train, self.test = data.train, data.test
        self.majority_accuracy = majority_accuracy(self.test)
        self.global_model = self.task.load_model(model_dir, len(data.label_names), cfg.seed)
        parts = partition_indices(data.partition_labels, cfg.clients.num_clients, cfg.partition, cfg.seed)
        self.devices: list[ClientDevice] = build_client_devices(cfg)
        self.timer = DeviceTimer(cfg, self.devices)
        if cfg.training.sim_time_budget_fedit_rounds is not None:
            cfg = self.config = self._with_fedit_time_budget(train, parts)
        calibration = train.subset(
            np.arange(min(len(train), cfg.training.batch_size * cfg.pruning.calibration_batches))
        )
        self.ctx = ServerContext(
            config=cfg,
            global_model=self.global_model,
            lora_targets=lora_targets(self.global_model, cfg.lora.target_modules),
            head_modules=head_module_names(self.global_model),
            client_num_samples={cid: len(p) for cid, p in enumerate(parts)},
            calibration_batches=list(calibration.batches(cfg.training.batch_size)),
            client_capacity={
                d.client_id: d.profile.flops_per_s if d.profile else d.num_cpus for d in self.devices
            },
            backend=build_backend(cfg.server),
            sim_clock_s=lambda: self.sim_clock_s,
        )
        self.strategy = build_strategy(cfg.method.name)
        self.strategy.setup(self.ctx)
        self.static_names = static_tensor_names(self.global_model, self.ctx.head_modules)
        self._start_clients({d.client_id: train.subset(parts[d.client_id]) for d in self.devices})
        return {
            "run_id": self.run_id,
            "num_clients": len(self.clients),
            "placement": self.runtime.mode,
            "client_processes": len(self.runtime.actors),
            "train_samples": len(train),
            "test_samples": len(self.test),
            "labels": data.label_names,
            "model_dir": str(model_dir),
            "total_params": sum(p.numel() for p in self.global_model.parameters()),
            "max_sim_time_s": cfg.training.max_sim_time_s,
        }

    def _with_fedit_time_budget(self, train: TokenizedSplit, parts: list[np.ndarray]) -> ExperimentConfig:
        """The config with ``max_sim_time_s`` set to dense FedIT's predicted time (fedspine_ray/time_budget.py)."""
        cfg = self.config
        rounds = cfg.training.sim_time_budget_fedit_rounds
        assert rounds is not None
        budget = predicted_fedit_time(
            cfg,
            rounds,
            self.global_model,
            self.devices,
            self.timer,
            {cid: train.subset(part) for cid, part in enumerate(parts)},
            lora_targets(self.global_model, cfg.lora.target_modules),
            head_module_names(self.global_model),
            self._select_clients,
        )
        training = dataclasses.replace(cfg.training, max_sim_time_s=budget, sim_time_budget_fedit_rounds=None)
        return dataclasses.replace(cfg, training=training)

    def _start_clients(self, shards: dict[int, TokenizedSplit]) -> None:
        """Create the clients' processes for ``clients.placement`` (runtime/pool.py) and wait for them.

        ``self.clients[cid]`` is a handle with the client's methods (``.fit.remote(...)``) in both modes:
        an actor of its own (dedicated) or a proxy to the pool worker serving it (pooled).
        """
        cfg = self.config.clients
        available = ray.cluster_resources()
        mode = resolve_placement(cfg.placement, self.devices, available)
        if mode == "dedicated":
            check_cluster_fits(self.devices)
            self.runtime: DedicatedRuntime | PooledRuntime = DedicatedRuntime(
                self.run_id, self.devices, shards
            )
        else:
            sizes = pool_sizes(self.devices, available, cfg.pool_size)
            check_cluster_fits(worker_devices(self.devices, sizes), what="pool workers")
            self.runtime = PooledRuntime(self.run_id, self.devices, shards, sizes)
        self.clients = self.runtime.handles
        wait_until_ready(self.runtime.actors, self.config.runtime.actor_start_timeout_s)
        if self.config.runtime.overlap_evaluation is None:
            self._overlap_evaluation = overlap_by_default(
                self.config.runtime.clock, ray.available_resources()
            )
        # Overlapped evaluations run on an idle-priority thread (runtime/idle_priority.py), with the torch
        # backend only: DeepSpeed's one-process group and engines are set up and exercised on the main thread
        # only (tests/test_server_backend.py); running them from another thread is untested.
        if self._overlap_evaluation and self.ctx.backend.name == "torch":
            self._idle_evaluator = IdlePriorityThread()

    # ----------------------------------------------------------------- rounds
    def run_round(self, rnd: int, start_next: bool = False) -> RoundReport:
        """Finish round ``rnd`` (configure and dispatch it first unless the previous call started it).

        With ``start_next`` (the runner asks when round ``rnd + 1`` will run and no checkpoint is taken after
        ``rnd``) and ``runtime.overlap_evaluation``, the clients of round ``rnd + 1`` are configured and sent
        off right after round ``rnd`` is aggregated, and round ``rnd`` is evaluated while they train. Every
        step that changes state (selection, configure, the clock, aggregation) runs in the same order as
        without overlap and evaluation only reads a snapshot, so the metrics are identical; the server's
        evaluation stops being time in which no client trains.
        """
        if rnd == 0:
            return self._initial_report()
        cfg = self.config
        call_start = time.perf_counter()
        inflight = self._inflight if self._inflight is not None and self._inflight.round == rnd else None
        self._inflight = None
        if inflight is None:
            inflight = self._start_round(rnd)
        # A round started by the previous call began when that call's report was done: its configure and
        # dispatch ran inside the previous round's window, overlapped by the previous evaluation.
        window_start = self._last_report_end if inflight.started_early else call_start
        outcomes = self._finish_round(inflight)
        round_time = self.timer.close_round(outcomes)
        self.sim_clock_s += round_time
        collected = time.perf_counter()
        extra = self.strategy.aggregate_round(rnd, outcomes)
        global_metrics = self.strategy.global_metrics()
        aggregated = time.perf_counter()
        model = self.strategy.evaluation_model()  # a snapshot: configuring the next round cannot change it
        if start_next and self._overlap_evaluation and not cfg.training.budget_spent(self.sim_clock_s):
            self._inflight = self._start_round(rnd + 1, started_early=True)
        next_started = time.perf_counter()
        if self._inflight is not None and self._idle_evaluator is not None:  # clients train meanwhile
            test_loss, test_accuracy = self._idle_evaluator.run(self._evaluate_model, model)
        else:
            test_loss, test_accuracy = self._evaluate_model(model)
        evaluated = time.perf_counter()
        usable = [o for o in outcomes if o.usable]
        fits = [o for o in outcomes if o.wall_time_s is not None and not math.isnan(o.wall_time_s)]
        train_times = [float(o.extras.get("train_time_s", 0.0)) for o in fits]
        timing = {  # where the round's wall time went (docs/results.md, benchmarks/bench_scale.py)
            "server_configure_s": inflight.configure_s,
            "dispatch_s": inflight.dispatch_s,
            "wait_s": inflight.wait_s,
            "aggregate_s": aggregated - collected,
            "next_round_start_s": next_started - aggregated,
            "eval_s": evaluated - next_started,
            "eval_overlapped": self._inflight is not None,
            "client_fit_s_sum": float(sum(o.wall_time_s for o in fits)),
            "client_train_s_sum": float(sum(train_times)),
            "client_train_s_max": float(max(train_times, default=0.0)),
            "client_train_cpu_s_sum": float(sum(o.extras.get("train_cpu_s", 0.0) for o in fits)),
            "client_processes": len(self.runtime.actors),
        }
        self._last_report_end = time.perf_counter()
        round_row = {
            "round": rnd,
            "method": cfg.method.name,
            "sim_time_s": self.sim_clock_s,
            "round_sim_time_s": round_time,
            "wall_time_s": self._last_report_end - self.wall_start,
            "round_wall_time_s": self._last_report_end - window_start,
            "train_loss": float(np.mean([o.loss_mean for o in usable])) if usable else math.nan,
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "majority_accuracy": self.majority_accuracy,
            "bytes_down": int(sum(o.extras.get("bytes_down", 0) for o in outcomes)),
            "bytes_up": int(sum(o.extras.get("bytes_up", 0) for o in outcomes)),
            "num_selected": len(outcomes),
            "num_aggregated": len(usable),
            "trainable_params": int(np.mean([o.extras["trainable_params"] for o in usable])) if usable else 0,
            "total_params": self._eval_params,
            **timing,
            **global_metrics,
            **extra,
        }
        client_rows = [self._client_row(rnd, o) for o in outcomes]
        return RoundReport(round_row, client_rows)

    def _start_round(self, rnd: int, started_early: bool = False) -> InFlightRound:
        """Select, configure and dispatch round ``rnd``: its clients start training on return."""
        started = time.perf_counter()
        selected = self._select_clients(rnd)
        assignments = self.strategy.configure_round(rnd, selected)
        configured = time.perf_counter()
        inflight = self._dispatch(rnd, assignments)
        inflight.configure_s = configured - started
        inflight.dispatch_s = time.perf_counter() - configured
        inflight.started_early = started_early
        return inflight

    def _initial_report(self) -> RoundReport:
        test_loss, test_accuracy = self.evaluate()
        self._last_report_end = time.perf_counter()
        row = {
            "round": 0,
            "method": self.config.method.name,
            "sim_time_s": 0.0,
            "round_sim_time_s": 0.0,
            "wall_time_s": time.perf_counter() - self.wall_start,
            "round_wall_time_s": 0.0,
            "train_loss": math.nan,
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "majority_accuracy": self.majority_accuracy,
            "bytes_down": 0,
            "bytes_up": 0,
            "num_selected": 0,
            "num_aggregated": 0,
            "trainable_params": 0,
            "total_params": self._eval_params,
            **self.strategy.global_metrics(),
        }
        return RoundReport(row, [])

    def _select_clients(self, rnd: int) -> list[int]:
        live = [d.client_id for d in self.devices if d.client_id not in self.dead_clients]
        if not live:
            raise RuntimeError("every client actor has died; fix: check memory limits and the Ray logs")
        wanted = self.config.clients.per_round()
        if wanted is None or wanted >= len(live):
            return live
        rng = np.random.default_rng([self.config.seed, rnd, 7])
        return sorted(rng.choice(live, size=wanted, replace=False).tolist())

    def _dispatch(self, rnd: int, assignments: dict[int, ClientAssignment]) -> InFlightRound:
        """Send every assigned client its fit task; returns the round's pending replies."""
        cfg = self.config
        bases: dict[Hashable, nn.Module] = {}
        # Each base goes into the object store once, and only if someone downloads it: whole for a device's
        # first download, without its static tensors (runtime/transfer.py) for devices that cache them.
        payloads: dict[tuple[Hashable, bool], BasePayload] = {}
        derivations: dict[tuple[Hashable, Hashable], tuple[Any, ray.ObjectRef | None]] = {}
        pending: dict[ray.ObjectRef, int] = {}
        outcomes: dict[int, ClientOutcome] = {}
        for cid, assignment in assignments.items():
            device = self.devices[cid]
            if assignment.base_key not in bases:
                bases[assignment.base_key] = assignment.build_base()
            base = bases[assignment.base_key]
            held = self.client_base.get(cid)
            derivation = derivation_ref = None
            if held != assignment.base_key and held is not None and assignment.derive is not None:
                # Many devices make the same move (held -> new sub-model): build and ship each move once.
                move = (held, assignment.base_key)
                if move not in derivations:
                    built = assignment.derive(held)
                    derivations[move] = (built, None if built is None else ray.put(built))
                derivation, derivation_ref = derivations[move]
            send_base = held != assignment.base_key and derivation is None
            payload = (
                self._payload(payloads, assignment.base_key, base, stripped=held is not None)
                if send_base
                else None
            )
            base_down = payload.nbytes if payload else (derivation.nbytes if derivation is not None else 0)
            adapter_down = tensor_bytes(assignment.factors) + tensor_bytes(assignment.head)
            cost = self.timer.estimate(
                device, base, assignment.rank, rnd, cfg.training, self.ctx.lora_targets, self.ctx.head_modules
            )
            extras = {
                "bytes_down": adapter_down + base_down,
                "base_transfer": "full" if send_base else ("derived" if derivation is not None else "cached"),
                "bytes_up": adapter_down,
                "flops_per_token": cost.flops_per_token,
                "memory_required_bytes": cost.memory_required,
                "memory_available_bytes": cost.memory_available,
                "trainable_params": cost.trainable_params,
                "model_params": cost.model_params,
                "conditions": cost.conditions,
            }
            outcome = ClientOutcome(cid, assignment, "ok", self.ctx.client_num_samples[cid], extras=extras)
            outcomes[cid] = outcome
            if not cost.fits:
                outcome.status = "oom"  # a real device would run out of memory building this sub-model
                outcome.extras.update(bytes_up=0, bytes_down=0, base_transfer="none")
                continue
            task = FitTask(
                round=rnd,
                base_key=assignment.base_key,
                rank=assignment.rank,
                factors=assignment.factors,
                head=assignment.head,
                local_steps=assignment.steps(cfg.training.local_steps),
                batch_size=cfg.training.batch_size,
                lr=cfg.training.lr,
                weight_decay=cfg.training.weight_decay,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                lora_targets=self.ctx.lora_targets,
                head_modules=self.ctx.head_modules,
                seed=cfg.seed,
                static_names=self.static_names,
                local_pruning=assignment.local_pruning,
            )
            pending[
                self.clients[cid].fit.remote(task, payload.ref() if payload else None, derivation_ref)
            ] = cid
            self.client_base[cid] = assignment.base_key
        return InFlightRound(rnd, pending, outcomes, bases)

    def _finish_round(self, inflight: InFlightRound) -> list[ClientOutcome]:
        """Wait for the round's clients and validate their updates; replace workers that died."""
        waiting = time.perf_counter()
        self._collect(inflight.round, inflight.pending, inflight.outcomes, inflight.bases)
        for lost in self.runtime.recover():  # replaced pool workers / dead actors: their models are gone
            self.client_base.pop(lost, None)
        inflight.wait_s = time.perf_counter() - waiting
        return [inflight.outcomes[cid] for cid in sorted(inflight.outcomes)]

    def _payload(
        self,
        payloads: dict[tuple[Hashable, bool], BasePayload],
        key: Hashable,
        base: nn.Module,
        stripped: bool,
    ) -> BasePayload:
        if (key, stripped) not in payloads:
            payloads[(key, stripped)] = BasePayload(
                strip_static(base, self.static_names) if stripped else base
            )
        return payloads[(key, stripped)]

    def _collect(
        self,
        rnd: int,
        pending: dict[ray.ObjectRef, int],
        outcomes: dict[int, ClientOutcome],
        bases: dict[Hashable, nn.Module],
    ) -> None:
        deadline = time.monotonic() + self.config.runtime.round_timeout_s
        expected_shapes: dict[Hashable, dict[str, tuple[int, int]]] = {}  # per sub-model, not per client
        remaining = list(pending)
        while remaining:
            done, remaining = ray.wait(
                remaining, num_returns=1, timeout=max(0.0, deadline - time.monotonic())
            )
            if not done:
                raise RuntimeError(
                    f"round {rnd}: {len(remaining)} clients did not reply within runtime.round_timeout_s="
                    f"{self.config.runtime.round_timeout_s}s; fix: raise the timeout or lower training.local_steps"
                )
            cid = pending[done[0]]
            outcome = outcomes[cid]
            try:
                result: FitResult = ray.get(done[0])
            except (RayActorError, OutOfMemoryError, WorkerCrashedError) as exc:  # the process is gone
                outcome.status = "actor_died"
                self.client_base.pop(cid, None)
                if self.runtime.client_failed(cid):  # dedicated: the client's process was the device
                    self.dead_clients.add(cid)
                    log.warning(
                        "client %d: actor died in round %d (%s); it is dropped from later rounds. Fix: give "
                        "clients more memory (clients.resources / device profiles) and check the Ray logs",
                        cid,
                        rnd,
                        type(exc).__name__,
                    )
                continue
            assignment = outcome.assignment
            if assignment.base_key not in expected_shapes:
                expected_shapes[assignment.base_key] = linear_shapes(
                    bases[assignment.base_key], self.ctx.lora_targets
                )
            expected = expected_shapes[assignment.base_key]
            try:
                validate_update(
                    result.factors, expected, client=cid, max_rank=assignment.rank, allow_missing=False
                )
                validate_factors_head(result.head, assignment.head, cid)
            except InvalidUpdateError as exc:
                log.warning("round %d: %s", rnd, exc)
                outcome.status = "rejected"
                outcome.extras["error"] = str(exc)
                continue
            outcome.factors, outcome.head = result.factors, result.head
            outcome.loss_first, outcome.loss_last = result.losses[0], result.losses[-1]
            outcome.loss_mean = float(np.mean(result.losses))
            outcome.wall_time_s = result.wall_time_s
            outcome.extras["train_time_s"] = result.train_time_s
            outcome.extras["train_cpu_s"] = result.train_cpu_s
            outcome.extras["tokens_processed"] = result.tokens_processed
            if result.local_pruning is not None:  # units removed mid-fit: the clock charges what ran
                outcome.extras["local_pruning"] = result.local_pruning
                outcome.extras["flops_per_token"] *= result.local_pruning.flops_scale
                outcome.extras["units_pruned_on_device"] = result.local_pruning.removed

    # ----------------------------------------------------------------- evaluation
    def evaluate(self) -> tuple[float, float]:
        """Test loss and accuracy of the strategy's current global model (the task kind defines both)."""
        return self._evaluate_model(self.strategy.evaluation_model())

    def _evaluate_model(self, model: nn.Module) -> tuple[float, float]:
        self._eval_params = sum(p.numel() for p in model.parameters())
        with self.ctx.backend.serving(model) as forward, torch.no_grad():  # server.backend
            return self.task.evaluate(forward, self.test, self.config.training.eval_batch_size)

    def _client_row(self, rnd: int, outcome: ClientOutcome) -> dict[str, Any]:
        device = self.devices[outcome.client_id]
        return {
            "round": rnd,
            "client_id": outcome.client_id,
            "device_class": device.device_class,
            "status": outcome.status,
            "num_samples": outcome.num_samples,
            "pruning_ratio": outcome.assignment.pruning_ratio,
            "lora_rank": outcome.assignment.rank,
            "arm": -1 if outcome.assignment.arm is None else outcome.assignment.arm,
            "local_steps": outcome.assignment.steps(self.config.training.local_steps),
            "loss_first": outcome.loss_first,
            "loss_last": outcome.loss_last,
            "loss_mean": outcome.loss_mean,
            "sim_time_s": outcome.sim_time_s,
            **{col: float(outcome.extras.get(col, math.nan)) for col in SIM_TIME_COLUMNS},
            "wall_time_s": outcome.wall_time_s,
            "bytes_down": int(outcome.extras.get("bytes_down", 0)),
            "bytes_up": int(outcome.extras.get("bytes_up", 0)),
            "base_transfer": outcome.extras.get("base_transfer", "none"),
            "flops_per_token": float(outcome.extras.get("flops_per_token", math.nan)),
            "tokens_processed": int(outcome.extras.get("tokens_processed", 0)),
            "units_pruned_on_device": int(outcome.extras.get("units_pruned_on_device", 0)),
            "memory_required_bytes": int(outcome.extras.get("memory_required_bytes", 0)),
            "memory_available_bytes": int(outcome.extras.get("memory_available_bytes", 0)),
            "model_params": int(outcome.extras.get("model_params", 0)),
            "trainable_params": int(outcome.extras.get("trainable_params", 0)),
            "reward": float(outcome.extras.get("reward", math.nan)),
        }

    # ----------------------------------------------------------------- checkpoints (fedspine_ray/checkpoint.py)
    def checkpoint_state(self, rnd: int) -> dict[str, Any]:
        """Everything a fresh server and fresh clients need to continue after round ``rnd``.

        The global model and the strategy's state travel in one object, so references between them
        survive pickling. Live clients export the sub-model they hold (dead ones hold nothing).
        """
        from fedspine_ray.checkpoint import rng_states

        live = [d.client_id for d in self.devices if d.client_id not in self.dead_clients]
        states = ray.get([self.clients[cid].export_state.remote() for cid in live])
        return {
            "round": rnd,
            "global_model": self.global_model,
            "strategy": self.strategy.state_dict(),
            "server": {
                "sim_clock_s": self.sim_clock_s,
                "client_base": dict(self.client_base),
                "dead_clients": sorted(self.dead_clients),
            },
            "clients": dict(zip(live, states, strict=True)),
            "rng": rng_states(),
        }

    def restore_state(self, data: bytes) -> int:
        """Load a checkpoint file's bytes after :meth:`setup`; returns the round it was taken after."""
        from fedspine_ray.checkpoint import decode_checkpoint, set_rng_states

        state = decode_checkpoint(data)
        self.global_model = self.ctx.global_model = state["global_model"]
        self.strategy.load_state_dict(state["strategy"])
        server = state["server"]
        self.sim_clock_s = float(server["sim_clock_s"])
        self.client_base = dict(server["client_base"])
        self.dead_clients = set(server["dead_clients"])
        ray.get([self.clients[cid].import_state.remote(cs) for cid, cs in state["clients"].items()])
        set_rng_states(state["rng"])
        return int(state["round"])

    def shutdown(self) -> None:
        self.runtime.shutdown()
        if self._idle_evaluator is not None:
            self._idle_evaluator.shutdown()


def validate_factors_head(
    head: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], client_id: int
) -> None:
    """The head comes back with the same keys and shapes it was sent with, and finite."""
    for name, tensor in reference.items():
        got = head.get(name)
        if got is None or got.shape != tensor.shape:
            raise InvalidUpdateError(
                f"client {client_id}: head parameter {name!r} has shape "
                f"{None if got is None else tuple(got.shape)}, expected {tuple(tensor.shape)}"
            )
        if not torch.isfinite(got).all():
            raise InvalidUpdateError(
                f"client {client_id}: head parameter {name!r} contains NaN/Inf; lower training.lr"
            )


def overlap_by_default(clock: str, available: dict[str, float]) -> bool:
    """``runtime.overlap_evaluation: null``: overlap where the server's evaluation gets a core of its own.

    Measured on 2 cores (benchmarks/README.md): with the client processes holding every CPU, overlapping
    gains nothing, at normal priority (the evaluation time-sliced with the clients, the round took as long)
    or at idle priority (the clients left only 3-5 % of the CPU unused, so the evaluation ran after them),
    and the next round's state held during the evaluation raised peak memory by 0.2-0.5 GiB. So the overlap
    is on by default only where the clients leave at least one CPU unrequested. Never with ``clock: wall``,
    whose measured device times the server's work would slow.
    """
    return clock != "wall" and available.get("CPU", 0.0) >= 1.0


def check_cluster_fits(devices: list[ClientDevice], what: str = "client actors") -> None:
    """Fail fast, naming the shortfall, when the cluster cannot host every client actor at once."""
    available = ray.cluster_resources()
    needed_cpus = sum(d.num_cpus for d in devices)
    if needed_cpus > available.get("CPU", 0) + 1e-9:
        raise RuntimeError(
            f"{len(devices)} {what} request {needed_cpus:g} CPUs in total but the Ray cluster has "
            f"{available.get('CPU', 0):g}; fix: lower clients.resources[].num_cpus (or the device profiles' "
            "ray_num_cpus), use clients.placement: pooled (or a smaller clients.pool_size), or add nodes"
        )
    missing = sorted({d.ray_resource for d in devices if d.ray_resource and d.ray_resource not in available})
    if missing:
        raise RuntimeError(
            f"no node advertises the custom resource {missing[0]!r} that its device class pins actors to; fix: "
            "declare it on the node types of your cluster YAML (see clusters/README.md), or let fedspine start "
            "the local Ray itself (it declares them)"
        )
