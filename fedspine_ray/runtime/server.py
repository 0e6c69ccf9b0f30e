"""The federated server: the round loop over the global model, the strategy and the clients.

It runs inside a Ray actor (created through :class:`fedspine_ray.runtime.remote.RemoteServer`); the
launching process only steps it round by round. Everything that touches the model happens here:
selection, handing each client its base through the object store, collecting and validating updates,
the clock, aggregation (the strategy's) and evaluation. What a method decides lives in its strategy;
what a task costs a device in :mod:`fedspine_ray.devices`; the row schema in :mod:`.rows`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import ObjectLostError, OutOfMemoryError, RayActorError, WorkerCrashedError
from torch import nn

from fedspine_ray.config import ExperimentConfig
from fedspine_ray.data import partition_indices
from fedspine_ray.data.tokens import TokenizedSplit
from fedspine_ray.devices.population import ClientDevice, build_client_devices
from fedspine_ray.messages import (
    ClientAssignment,
    ClientMetrics,
    ClientOutcome,
    Derivation,
    FitResult,
    FitTask,
    RoundReport,
    model_bytes,
    tensor_bytes,
)
from fedspine_ray.modeling.adapters import lora_target_shapes
from fedspine_ray.modeling.loading import head_module_names, load_tokenizer, lora_targets, resolve_model_path
from fedspine_ray.modeling.tasks import build_task, eval_subset, majority_accuracy
from fedspine_ray.pruning import count_parameters
from fedspine_ray.rounds.budget import predicted_fedit_time
from fedspine_ray.rounds.clock import RoundClock
from fedspine_ray.runtime.cpus import usable_cpus
from fedspine_ray.runtime.idle_priority import IdlePriorityThread
from fedspine_ray.runtime.pool import ClientShards, overlap_by_default, start_clients, unplaceable_outcome
from fedspine_ray.runtime.rows import client_row, round_row, timing_columns
from fedspine_ray.runtime.transfer import static_tensor_names, strip_static
from fedspine_ray.runtime.zero import server_backend
from fedspine_ray.strategies import ServerContext, build_strategy
from fedspine_ray.strategies.aggregate import InvalidUpdateError, validate_head, validate_update

log = logging.getLogger("fedspine_ray.server")
#: A client's reply cannot come: its process died (killed, out of memory) or its node did, with the reply.
PROCESS_LOST = (RayActorError, OutOfMemoryError, WorkerCrashedError, ObjectLostError)


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
    #: CPU seconds the server process spent selecting, configuring and dispatching the round.
    start_cpu_s: float = 0.0
    #: Selected clients no live node can host (runtime/pool.py): rows with status ``unplaceable``, nothing else.
    unplaceable: list[int] = dataclasses.field(default_factory=list)


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


@dataclass
class RoundShipping:
    """What one round sends, each thing built and put in the object store at most once per round.

    Many clients share a base (same key) or make the same move between bases (held -> new): the base is
    built once, put once (whole for first downloads, without its static tensors for devices that cache
    them, runtime/transfer.py), and each derivation is built and put once.
    """

    bases: dict[Hashable, nn.Module] = dataclasses.field(default_factory=dict)
    payloads: dict[tuple[Hashable, bool], BasePayload] = dataclasses.field(default_factory=dict)
    derivations: dict[tuple[Hashable, Hashable], tuple[Derivation | None, ray.ObjectRef | None]] = (
        dataclasses.field(default_factory=dict)
    )


class FederatedServer:
    """Holds the global model and strategy, drives client actors, evaluates after every round."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        torch.set_num_threads(min(4, usable_cpus()))  # the CPUs it may run on, not the machine's
        self.wall_start = time.perf_counter()
        self.client_base: dict[int, Hashable] = {}
        self.dead_clients: set[int] = set()
        #: Client actors are named ``fedspine-<run_id>-client-<id>`` so operators can find them in Ray.
        self.run_id = uuid.uuid4().hex[:8]
        self._inflight: InFlightRound | None = None
        self._last_report_end = time.perf_counter()
        self._overlap_evaluation = bool(config.runtime.overlap_evaluation)  # null: decided in setup
        self._idle_evaluator: IdlePriorityThread | None = None  # overlapped evaluations run on it
        self._eval_params = 0

    # ----------------------------------------------------------------- set-up
    def setup(self) -> dict[str, Any]:
        """Load model and data, partition, create client actors; returns a summary for the console.

        ``"config"`` in the summary is the run's effective config: the one passed in, with a simulated-time
        budget derived from the population resolved into ``training.max_sim_time_s`` (the server is the
        only place that can predict it; the launcher records what it returns).
        """
        cfg = self.config
        model_dir = resolve_model_path(cfg.model.path)
        self.task = build_task(cfg)  # classification or causal_lm: data rendering, model kind, evaluation
        data = self.task.prepare(cfg, load_tokenizer(model_dir))
        train, self.test = data.train, data.test
        self.majority_accuracy = majority_accuracy(self.test)
        #: What the rounds between full evaluations evaluate (training.eval_subset; the whole split if unset).
        self.eval_set = eval_subset(self.test, cfg.training.eval_subset, cfg.seed)
        self.global_model = self.task.load_model(model_dir, len(data.label_names), cfg.seed)
        self.devices: list[ClientDevice] = build_client_devices(cfg)
        # Each client's device capability (sustained FLOP/s; CPUs without profiles): what strategies rank
        # devices by, and what partition.kind device_correlated splits the data along.
        capacity = {d.client_id: d.profile.flops_per_s if d.profile else d.num_cpus for d in self.devices}
        parts = partition_indices(
            data.partition_labels,
            cfg.clients.num_clients,
            cfg.partition,
            cfg.seed,
            [capacity[d.client_id] for d in self.devices],
        )
        self.clock = RoundClock(cfg, self.devices)
        if cfg.training.sim_time_budget_fedit_rounds is not None:
            cfg = self.config = self.clock.config = self._with_fedit_time_budget(train, parts)
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
            client_capacity=capacity,
            backend=server_backend(cfg.server, self.run_id),  # server.num_ranks > 1: a ZeRO rank group
            sim_clock_s=lambda: self.clock.now_s,
            held_base=lambda client_id: self.client_base.get(client_id),
        )
        self.strategy = build_strategy(cfg.method.name)
        self.strategy.setup(self.ctx)
        self.static_names = static_tensor_names(self.global_model, self.ctx.head_modules)
        self._start_clients(ClientShards(train, parts))  # shards cut per process, not 10,000 copies here
        return {
            "run_id": self.run_id,
            "num_clients": len(self.clients),
            "placement": self.runtime.mode,
            "client_processes": len(self.runtime.actors),
            "train_samples": len(train),
            "test_samples": len(self.test),
            "labels": data.label_names,
            "model_dir": str(model_dir),
            "total_params": count_parameters(self.global_model),
            "config": cfg,
        }

    def _with_fedit_time_budget(self, train: TokenizedSplit, parts: list[np.ndarray]) -> ExperimentConfig:
        """The config with ``max_sim_time_s`` set to dense FedIT's predicted time (fedspine_ray/rounds/budget.py)."""
        cfg = self.config
        rounds = cfg.training.sim_time_budget_fedit_rounds
        assert rounds is not None
        budget = predicted_fedit_time(
            cfg,
            rounds,
            self.global_model,
            self.devices,
            self.clock,
            {cid: train.subset(part) for cid, part in enumerate(parts)},
            lora_targets(self.global_model, cfg.lora.target_modules),
            head_module_names(self.global_model),
            self._select_clients,
        )
        training = dataclasses.replace(cfg.training, max_sim_time_s=budget, sim_time_budget_fedit_rounds=None)
        return dataclasses.replace(cfg, training=training)

    def _start_clients(self, shards: ClientShards) -> None:
        """Create the clients' processes (runtime/pool.py) and decide whether evaluation overlaps rounds."""
        cfg = self.config
        self.runtime = start_clients(
            self.run_id,
            self.devices,
            shards,
            cfg.clients.placement,
            cfg.clients.pool_size,
            cfg.runtime.actor_start_timeout_s,
        )
        self.clients = self.runtime.handles
        if cfg.runtime.overlap_evaluation is None:
            self._overlap_evaluation = overlap_by_default(cfg.runtime.clock, ray.available_resources())
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
            return self._initial_report(start_next)
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
        round_time = self.clock.close_round(outcomes)
        collected, collected_cpu = time.perf_counter(), time.process_time()
        extra = self.strategy.aggregate_round(rnd, outcomes)
        global_metrics = self.strategy.global_metrics()
        aggregated, aggregate_cpu = time.perf_counter(), time.process_time() - collected_cpu
        full = self._full_evaluation(rnd)
        split = self.test if full else self.eval_set
        evaluates = full or rnd % cfg.training.eval_every == 0
        # a snapshot: configuring the next round cannot change it
        model = self.strategy.evaluation_model() if evaluates else None
        self._start_next_early(rnd, start_next)
        next_started = time.perf_counter()
        evaluation = self._not_evaluated() if model is None else self._evaluate_beside_clients(model, split)
        evaluated = time.perf_counter()
        timing = {  # where the round's wall time went (docs/results.md, benchmarks/bench_scale.py)
            "server_configure_s": inflight.configure_s,
            "dispatch_s": inflight.dispatch_s,
            "wait_s": inflight.wait_s,
            "aggregate_s": aggregated - collected,
            "next_round_start_s": next_started - aggregated,
            "eval_s": evaluated - next_started,
            "eval_overlapped": model is not None and self._inflight is not None,
            "server_start_cpu_s": inflight.start_cpu_s,
            "aggregate_cpu_s": aggregate_cpu,
            **timing_columns(outcomes),
            "client_processes": len(self.runtime.actors),
        }
        self._last_report_end = time.perf_counter()
        clock = {
            "sim_time_s": self.clock.now_s,
            "round_sim_time_s": round_time,
            "wall_time_s": self._last_report_end - self.wall_start,
            "round_wall_time_s": self._last_report_end - window_start,
        }
        row = round_row(
            rnd, cfg.method.name, outcomes, evaluation, clock, {**timing, **global_metrics, **extra}
        )
        steps = cfg.training.local_steps
        rows = [client_row(rnd, o, self.devices[o.client_id].device_class, steps) for o in outcomes]
        for cid in inflight.unplaceable:  # selected, but their process is lost with no node to move to
            lost = unplaceable_outcome(cid, self.ctx.client_num_samples[cid])
            rows.append(client_row(rnd, lost, self.devices[cid].device_class, steps))
        return RoundReport(row, rows)

    def _start_round(self, rnd: int, started_early: bool = False) -> InFlightRound:
        """Select, configure and dispatch round ``rnd``: its clients start training on return."""
        started, started_cpu = time.perf_counter(), time.process_time()
        selected, unplaceable = self.runtime.placeable(self._select_clients(rnd))
        assignments = self.strategy.configure_round(rnd, selected)
        configured = time.perf_counter()
        inflight = self._dispatch(rnd, assignments)
        inflight.unplaceable = unplaceable
        inflight.configure_s = configured - started
        inflight.dispatch_s = time.perf_counter() - configured
        inflight.start_cpu_s = time.process_time() - started_cpu
        inflight.started_early = started_early
        return inflight

    def _initial_report(self, start_next: bool) -> RoundReport:
        """Round 0: the untrained global model on the whole test split.

        With ``start_next`` and ``runtime.overlap_evaluation`` round 1 is configured and dispatched first and
        this evaluation runs while its clients train, as every later round's does: the whole-split evaluation
        is the longest the run makes, and without overlap no client trains during it. Round 1's configure
        (FedSpine: the one server-side importance pass that cuts the first sub-models) then lies in this
        row's window, which ends when this report is done.
        """
        model = self.strategy.evaluation_model()  # a snapshot, taken before round 1 is configured
        started = time.perf_counter()
        self._start_next_early(0, start_next)
        next_started = time.perf_counter()
        evaluation = self._evaluate_beside_clients(model, self.test)
        self._last_report_end = time.perf_counter()
        clock = {
            "sim_time_s": 0.0,
            "round_sim_time_s": 0.0,
            "wall_time_s": self._last_report_end - self.wall_start,
            "round_wall_time_s": 0.0,
        }
        timing = {
            "next_round_start_s": next_started - started,
            "eval_s": self._last_report_end - next_started,
            "eval_overlapped": self._inflight is not None,
        }
        extra = {**timing, **self.strategy.global_metrics()}
        return RoundReport(round_row(0, self.config.method.name, [], evaluation, clock, extra), [])

    def _start_next_early(self, rnd: int, start_next: bool) -> None:
        """Configure and dispatch round ``rnd + 1`` before round ``rnd`` is evaluated, where the runner allows
        it (``start_next``), evaluation overlaps (``runtime.overlap_evaluation``) and the time budget is not
        spent; it becomes ``self._inflight``."""
        if (
            start_next
            and self._overlap_evaluation
            and not self.config.training.budget_spent(self.clock.now_s)
        ):
            self._inflight = self._start_round(rnd + 1, started_early=True)

    def _evaluate_beside_clients(self, model: nn.Module, split: TokenizedSplit) -> dict[str, float]:
        """Evaluate ``model``; while a started round's clients train, on the idle-priority thread (where the
        torch backend has one: runtime/idle_priority.py), so the clients keep the cores they need."""
        if self._inflight is not None and self._idle_evaluator is not None:
            return self._idle_evaluator.run(self._evaluate_model, model, split)
        return self._evaluate_model(model, split)

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
        """Send every assigned client its fit task (unless it does not fit its device); returns the replies
        to wait for."""
        shipping = RoundShipping()
        pending: dict[ray.ObjectRef, int] = {}
        outcomes: dict[int, ClientOutcome] = {}
        for cid, assignment in assignments.items():
            if assignment.base_key not in shipping.bases:
                shipping.bases[assignment.base_key] = self.strategy.base_model(assignment.base_key)
            base = shipping.bases[assignment.base_key]
            payload, derivation, derivation_ref = self._base_transfer(shipping, cid, assignment)
            targets = self.ctx.lora_targets if assignment.lora_modules is None else assignment.lora_modules
            cost = self.clock.estimate(cid, base, assignment.rank, rnd, targets, self.ctx.head_modules)
            outcome = ClientOutcome(
                cid,
                assignment,
                self.ctx.client_num_samples[cid],
                metrics=ClientMetrics(
                    flops_per_token=cost.flops_per_token,
                    memory_required_bytes=cost.memory_required,
                    memory_available_bytes=cost.memory_available,
                    trainable_params=cost.trainable_params,
                    model_params=cost.model_params,
                    node_id=self.runtime.node_of(cid),  # where it was placed; the reply says where it ran
                ),
                fits_memory=cost.fits,
                conditions=cost.conditions,
            )
            outcomes[cid] = outcome
            if not cost.fits:  # a real device would run out of memory building this sub-model: not sent
                continue
            adapters = tensor_bytes(assignment.factors) + tensor_bytes(assignment.head)
            base_down = payload.nbytes if payload else (derivation.nbytes if derivation is not None else 0)
            outcome.metrics.bytes_down, outcome.metrics.bytes_up = adapters + base_down, adapters
            outcome.metrics.base_transfer = (
                "full" if payload is not None else ("derived" if derivation is not None else "cached")
            )
            task = self._fit_task(rnd, assignment)
            ref = self.clients[cid].fit.remote(task, payload.ref() if payload else None, derivation_ref)
            pending[ref] = cid
            self.client_base[cid] = assignment.base_key
        return InFlightRound(rnd, pending, outcomes, shipping.bases)

    def _base_transfer(
        self, shipping: RoundShipping, cid: int, assignment: ClientAssignment
    ) -> tuple[BasePayload | None, Derivation | None, ray.ObjectRef | None]:
        """How the client gets its base: nothing (it holds it), a derivation of the one it holds, or whole."""
        key = assignment.base_key
        held = self.client_base.get(cid)
        if held == key:
            return None, None, None
        if held is not None:
            move = (held, key)
            if move not in shipping.derivations:
                built = self.strategy.derivation(held, key)
                shipping.derivations[move] = (built, None if built is None else ray.put(built))
            derivation, ref = shipping.derivations[move]
            if derivation is not None:
                return None, derivation, ref
        stripped = held is not None  # a device that held any base keeps the static tensors
        if (key, stripped) not in shipping.payloads:
            base = shipping.bases[key]
            shipping.payloads[(key, stripped)] = BasePayload(
                strip_static(base, self.static_names) if stripped else base
            )
        return shipping.payloads[(key, stripped)], None, None

    def _fit_task(self, rnd: int, assignment: ClientAssignment) -> FitTask:
        cfg = self.config
        return FitTask(
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
            # PEFT's target_modules takes full names as well as suffixes: a client training some modules only
            # (ClientAssignment.lora_modules, LEGEND's depth) wraps exactly those
            lora_targets=assignment.lora_modules or self.ctx.lora_targets,
            head_modules=self.ctx.head_modules,
            seed=cfg.seed,
            static_names=self.static_names,
            local_pruning=assignment.local_pruning,
        )

    def _finish_round(self, inflight: InFlightRound) -> list[ClientOutcome]:
        """Wait for the round's clients and validate their updates; replace workers that died."""
        waiting = time.perf_counter()
        self._collect(inflight)
        for lost in self.runtime.recover():  # replaced pool workers / dead actors: their models are gone
            self.client_base.pop(lost, None)
        inflight.wait_s = time.perf_counter() - waiting
        return [inflight.outcomes[cid] for cid in sorted(inflight.outcomes)]

    def _collect(self, inflight: InFlightRound) -> None:
        """Receive every reply (in completion order) under ``runtime.round_timeout_s``."""
        timeout = self.config.runtime.round_timeout_s
        deadline = time.monotonic() + timeout
        expected: dict[Hashable, dict[str, tuple[int, int]]] = {}  # per sub-model, not per client
        remaining = list(inflight.pending)
        while remaining:
            done, remaining = ray.wait(
                remaining, num_returns=1, timeout=max(0.0, deadline - time.monotonic())
            )
            if not done:
                raise RuntimeError(
                    f"round {inflight.round}: {len(remaining)} clients did not reply within "
                    f"runtime.round_timeout_s={timeout}s; fix: raise the timeout or lower training.local_steps"
                )
            outcome = inflight.outcomes[inflight.pending[done[0]]]
            try:
                result: FitResult = ray.get(done[0])
            except PROCESS_LOST as exc:  # the process (or its node, with the reply) is gone
                self._lost(inflight.round, outcome, exc)
                continue
            key = outcome.assignment.base_key
            if key not in expected:
                expected[key] = lora_target_shapes(inflight.bases[key], self.ctx.lora_targets)
            self._receive(inflight.round, outcome, result, expected[key])

    def _lost(self, rnd: int, outcome: ClientOutcome, exc: Exception) -> None:
        """The client's process died during its fit: the round goes on without it."""
        cid = outcome.client_id
        outcome.failure = "actor_died"
        self.client_base.pop(cid, None)
        if self.runtime.client_failed(cid):  # dedicated: the client's process was the device
            self.dead_clients.add(cid)
            log.warning(
                "client %d: actor died in round %d (%s); it is dropped from later rounds. Fix: give clients "
                "more memory (clients.resources / device profiles) and check the Ray logs",
                cid,
                rnd,
                type(exc).__name__,
            )

    def _receive(
        self, rnd: int, outcome: ClientOutcome, result: FitResult, expected: dict[str, tuple[int, int]]
    ) -> None:
        """Check a reply against the shapes its base was sent with; record it, or reject it."""
        modules = outcome.assignment.lora_modules
        if modules is not None:  # it trained these only (LEGEND's depth): exactly these must come back
            wanted = set(modules)
            expected = {name: shape for name, shape in expected.items() if name in wanted}
        try:
            validate_update(
                result.factors,
                expected,
                client=outcome.client_id,
                max_rank=outcome.assignment.rank,
                allow_missing=False,
            )
            validate_head(result.head, outcome.assignment.head, outcome.client_id)
        except InvalidUpdateError as exc:
            log.warning("round %d: %s", rnd, exc)
            outcome.failure, outcome.error = "rejected", str(exc)
            return
        outcome.factors, outcome.head = result.factors, result.head
        outcome.loss_first, outcome.loss_last = result.losses[0], result.losses[-1]
        outcome.loss_mean = float(np.mean(result.losses))
        outcome.wall_time_s = result.wall_time_s
        metrics = outcome.metrics
        metrics.train_time_s, metrics.train_cpu_s = result.train_time_s, result.train_cpu_s
        metrics.node_id, metrics.accelerator = result.node_id or metrics.node_id, result.accelerator
        metrics.gpu_memory_peak_bytes = result.gpu_memory_peak_bytes
        metrics.tokens_processed = result.tokens_processed
        if result.local_pruning is not None:  # units removed mid-fit: the clock charges what ran
            outcome.local_pruning = result.local_pruning
            metrics.flops_per_token *= result.local_pruning.flops_scale
            metrics.units_pruned_on_device = result.local_pruning.removed

    # ----------------------------------------------------------------- evaluation
    def _full_evaluation(self, rnd: int) -> bool:
        """Whether round ``rnd`` evaluates the whole test split, not ``training.eval_subset`` of it: every
        ``training.eval_full_every``-th round and the last one (``training.rounds``, or a spent time budget)."""
        training = self.config.training
        every = training.eval_full_every
        return (
            rnd >= training.rounds
            or bool(every and rnd % every == 0)
            or training.budget_spent(self.clock.now_s)
        )

    def _not_evaluated(self) -> dict[str, float]:
        """The evaluation columns of a round ``training.eval_every`` skips: no test metrics (NaN, never a
        stale value carried over), 0 examples, and the global model's size (the evaluated model's: merging
        adapters and loading the head change no shape)."""
        return {
            "test_loss": math.nan,
            "test_accuracy": math.nan,
            "majority_accuracy": math.nan,
            "total_params": count_parameters(self.global_model),
            "eval_samples": 0.0,
            "eval_cpu_s": 0.0,
        }

    def _evaluate_model(self, model: nn.Module, split: TokenizedSplit | None = None) -> dict[str, float]:
        """The task's evaluation columns of ``model`` on ``split`` (default: the whole test split)."""
        split = self.test if split is None else split
        self._eval_params = count_parameters(model)
        cpu = time.process_time()  # the process's CPU: this thread and torch's intra-op threads
        with self.ctx.backend.serving(model) as forward, torch.no_grad():  # server.backend
            metrics = self.task.evaluate_metrics(forward, split, self.config.training.eval_batch_size)
        return {
            **metrics,
            "majority_accuracy": majority_accuracy(split),
            "total_params": self._eval_params,
            "eval_cpu_s": time.process_time() - cpu,
        }

    # ----------------------------------------------------------------- checkpoints (runtime/checkpoint.py)
    def checkpoint_state(self, rnd: int) -> dict[str, Any]:
        """Everything a fresh server and fresh clients need to continue after round ``rnd``.

        The global model and the strategy's state travel in one object, so references between them
        survive pickling. Live clients export the sub-model they hold (dead ones hold nothing).
        """
        from fedspine_ray.runtime.checkpoint import rng_states

        gone = self.dead_clients | self.runtime.unplaceable  # no process: they hold nothing
        live = [d.client_id for d in self.devices if d.client_id not in gone]
        refs = {cid: self.clients[cid].export_state.remote() for cid in live}
        states = {}
        for cid, ref in refs.items():
            try:
                states[cid] = ray.get(ref)
            except PROCESS_LOST:  # lost since its round (e.g. with its node): it holds nothing any more
                self.client_base.pop(cid, None)
                if self.runtime.client_failed(cid):
                    self.dead_clients.add(cid)
        if len(states) < len(refs):  # replace what was lost now, so the checkpoint is consistent
            for lost in self.runtime.recover():
                self.client_base.pop(lost, None)
        return {
            "round": rnd,
            "global_model": self.global_model,
            "strategy": self.strategy.state_dict(),
            "server": {
                "sim_clock_s": self.clock.now_s,
                "client_base": dict(self.client_base),
                "dead_clients": sorted(self.dead_clients),
            },
            "clients": states,
            "rng": rng_states(),
        }

    def restore_state(self, data: bytes) -> int:
        """Load a checkpoint file's bytes after :meth:`setup`; returns the round it was taken after."""
        from fedspine_ray.runtime.checkpoint import decode_checkpoint, set_rng_states

        state = decode_checkpoint(data)
        self.global_model = self.ctx.global_model = state["global_model"]
        self.strategy.load_state_dict(state["strategy"])
        server = state["server"]
        self.clock.now_s = float(server["sim_clock_s"])
        self.client_base = dict(server["client_base"])
        self.dead_clients = set(server["dead_clients"])
        ray.get([self.clients[cid].import_state.remote(cs) for cid, cs in state["clients"].items()])
        set_rng_states(state["rng"])
        return int(state["round"])

    def shutdown(self) -> None:
        self.runtime.shutdown()
        self.ctx.backend.close()  # a ZeRO rank group's actors (server.num_ranks > 1)
        if self._idle_evaluator is not None:
            self._idle_evaluator.shutdown()
