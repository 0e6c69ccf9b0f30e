"""Shared machinery of every LoRA method: global adapters in full coordinates, sub-models, aggregation.

The server keeps one global adapter per target module at the largest rank any client uses, in the
coordinates of the current global model. Each round a client gets a sub-model (the global model with a
fraction of attention units / MLP channels removed, or the model itself), the global adapter cut to its
rank by the aggregator's ``distribute`` and sliced to the sub-model's coordinates. What comes back is
scattered into global coordinates (zeros where the sub-model had no units, with a coverage mask) and
merged by the configured aggregator. Subclasses only decide each client's (pruning ratio, rank) and what
happens to the global model after aggregation.

The round policies apply here, to every method alike (fedspine_ray/rounds/policy.py): before choosing, the
round's budget comes from each selected device's predicted time at its cheapest option; after choosing,
devices predicted to finish early get more local steps (``rounds.fill``); after the round, every device's
measured phases update its learned speeds. What an option asks of a device (compute, bytes) is
:meth:`LoRAStrategy.arm_work`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from torch import nn

from fedspine_ray.devices.workload import adapter_bytes, linear_params
from fedspine_ray.messages import ClientAssignment, ClientOutcome, Derivation, tensor_bytes
from fedspine_ray.modeling.adapters import Factors, init_factors, lora_target_shapes, module_state
from fedspine_ray.pruning import (
    PruningPlan,
    UnitImportance,
    apply_plan,
    count_parameters,
    identity_plan,
    kept_importance,
    linear_index_map,
    lora_to_global,
    lora_to_sub,
    merge_lora_delta,
    plan_for_original_ratio,
    plan_for_ratio,
    prunable_units,
    ratio_for_sparsity,
    relative_plan,
    sparsity_at_progress,
    submodel_sharing_weights,
    unit_slices,
)
from fedspine_ray.pruning.local import ImportanceTracker, LocalPruningTask, removal_counts
from fedspine_ray.rounds.policy import RoundPolicy
from fedspine_ray.rounds.time_model import ArmWork
from fedspine_ray.strategies.aggregate import (
    Aggregator,
    ClientLoRA,
    average_states,
    get_aggregator,
    normalise_steps,
)
from fedspine_ray.strategies.base import ServerContext, Strategy

IndexMap = dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]


class LoRAStrategy(Strategy):
    """Base of FedIT, HetLoRA, FlexLoRA and FedSpine; see the module docstring."""

    #: Aggregator used when ``method.aggregation`` is not set.
    default_aggregation = "fedavg"
    #: Whether the global model is pruned toward ``pruning.target_sparsity`` when ``method.prune_global``
    #: is not set: FedSpine does; the baselines do only when asked (equal-sparsity comparisons). The same
    #: methods are the ones whose devices may get pruned sub-models (their ``choose`` returns ratios > 0).
    prunes_globally = False
    #: Per-round sub-model builders (closures over the global model): rebuilt in every configure_round.
    transient_state = ("_round_plans",)

    def setup(self, ctx: ServerContext) -> None:
        super().setup(ctx)
        cfg = ctx.config
        self.aggregator: Aggregator = get_aggregator(cfg.method.aggregation or self.default_aggregation)
        self.global_rank = self.max_rank()
        self.version = 0  # bumped whenever the global base weights change (clients must re-download)
        self.factors: Factors = self._fresh_factors(seed=cfg.seed)
        self.head = module_state(ctx.global_model, ctx.head_modules)
        self._importance: UnitImportance | None = None
        self._round_plans: dict[float, tuple[Callable[[], nn.Module], IndexMap]] = {}
        # Bookkeeping in the ORIGINAL model's unit coordinates, which never change: which units the
        # global model keeps, which units each issued sub-model keeps, and every adapter merged into the
        # base (so a device holding an older, larger sub-model can derive a new one locally).
        self.global_units: PruningPlan = identity_plan(ctx.global_model)
        self.original_shapes = lora_target_shapes(ctx.global_model, ctx.lora_targets)
        self.merge_log: dict[int, Factors] = {}
        self._issued: dict[tuple[int, float], PruningPlan] = {}
        prune = cfg.method.prune_global
        self.prune_global = self.prunes_globally if prune is None else prune
        self.prune_rounds = max(1, math.ceil(cfg.training.rounds * cfg.pruning.end_fraction))
        self.pruning_done = False  # set by the step that reaches the schedule's end
        #: Devices' aggregated LoRA-gradient unit scores (``pruning.where: client``); empty until reported.
        self.device_importance = ImportanceTracker(cfg.pruning.importance_smoothing)
        #: The round policies (``rounds``): learned device speeds, this round's budget, fill.
        self.policy = RoundPolicy(cfg.rounds)
        #: The work each client's assignment asks of its device this round (what the time model observes).
        self._round_work: dict[int, ArmWork] = {}
        self._base_work: dict[tuple[Hashable, float], tuple[float, float]] = {}
        self._unit_costs_cache: tuple[int, dict[str, Any]] | None = None

    # ------------------------------------------------------------------ hooks for subclasses
    def max_rank(self) -> int:
        return self.ctx.config.lora.rank

    def choose(self, rnd: int, client_id: int) -> tuple[float, int, int | None]:
        """(pruning ratio, LoRA rank, bandit arm or None) of a client this round."""
        return 0.0, self.ctx.config.lora.rank, None

    def cheapest_option(self, rnd: int, client_id: int) -> tuple[float, int]:
        """The (ratio, rank) that asks least of the client this round: what the round's budget is set from.

        A method whose arms are fixed has one option, its own arm (the default asks :meth:`choose`, which
        must then have no side effect); a method that chooses among arms overrides this.
        """
        ratio, rank, _ = self.choose(rnd, client_id)
        return ratio, rank

    def after_aggregation(self, rnd: int, outcomes: Sequence[ClientOutcome]) -> dict[str, float]:
        """Called once the global adapter is updated (pruning, bandit feedback); returns metrics."""
        return {}

    # ------------------------------------------------------------------ round protocol
    def configure_round(self, rnd: int, client_ids: Sequence[int]) -> dict[int, ClientAssignment]:
        self._round_plans, self._round_work, self._base_work = {}, {}, {}
        timed = self.ctx.config.rounds.time_model
        if timed:
            self.policy.begin_round(
                client_ids, lambda cid: self.arm_work(cid, *self.cheapest_option(rnd, cid))
            )
        assignments = {}
        by_rank: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}  # distribute once per rank
        for cid in client_ids:
            ratio, rank, arm = self.choose(rnd, cid)
            start, local = self._device_side_split(ratio)
            _, index_map = self._submodel(start)
            if rank not in by_rank:
                by_rank[rank] = self.aggregator.distribute(self.factors, rank)
            factors = lora_to_sub(by_rank[rank], index_map)
            key = (self.version, start)
            assignments[cid] = ClientAssignment(
                base_key=key,
                rank=rank,
                factors=factors,
                head=self.head,
                pruning_ratio=ratio,
                arm=arm,
                submodel_ratio=start,
                local_pruning=local,
            )
            if timed:
                self._round_work[cid] = self.arm_work(cid, ratio, rank)
        if self.ctx.config.rounds.fill:
            self._fill_round(assignments)
        return assignments

    def _fill_round(self, assignments: dict[int, ClientAssignment]) -> None:
        """Give devices predicted to finish early the local steps that fit before the round's end."""
        steps = self.ctx.config.training.local_steps
        for cid, assignment in assignments.items():
            work = self._round_work.get(cid)
            filled = self.policy.fill(cid, work, steps) if work is not None else None
            if filled is not None:
                assignments[cid] = dataclasses.replace(assignment, local_steps=filled.steps)
                self._round_work[cid] = filled.work

    def _device_side_split(self, ratio: float) -> tuple[float, LocalPruningTask | None]:
        """(ratio of the sub-model sent, device-side pruning task) for a device that must end at ``ratio``.

        Server mode sends the sub-model at ``ratio``. Client mode sends it at ``ratio * (1 - local_share)``
        and asks the device to remove the difference itself while it trains (fedspine_ray/pruning/local.py);
        a device with nothing to remove still scores its units, so every device informs the sub-models and the
        global prune. A method that neither cuts sub-models nor prunes the global model (FedIT, HetLoRA, ...
        with ``method.prune_global: false``) has no use for scores, so its devices are not asked to compute
        them. The test is per method, not per device: a device at ratio 0 of a pruning method still scores.
        """
        cfg = self.ctx.config.pruning
        if cfg.where != "client" or not (self.prunes_globally or self.prune_global):
            return ratio, None
        start = round(ratio * (1.0 - cfg.local_share), 6)
        self._submodel(start)
        self._submodel(ratio)
        remove = removal_counts(self._issued[(self.version, start)], self._issued[(self.version, ratio)])
        return start, LocalPruningTask(
            remove, cfg.local_prune_every, cfg.local_smoothing, importance=cfg.local_importance
        )

    def aggregate_round(self, rnd: int, outcomes: Sequence[ClientOutcome]) -> dict[str, float]:
        usable = [o for o in outcomes if o.usable]
        if usable:
            global_shapes = lora_target_shapes(self.ctx.global_model, self.ctx.lora_targets)
            updates, starts = [], []
            for outcome in usable:
                _, index_map = self._round_plans[outcome.assignment.base_ratio]
                full = lora_to_global(outcome.factors, index_map, global_shapes)
                updates.append(
                    ClientLoRA(
                        full,
                        outcome.num_samples,
                        _coverage_masks(index_map, global_shapes),
                        outcome.client_id,
                    )
                )
                starts.append(lora_to_global(outcome.assignment.factors, index_map, global_shapes))
            if self.ctx.config.method.normalise_steps:
                steps = [o.assignment.steps(self.ctx.config.training.local_steps) for o in usable]
                updates = normalise_steps(updates, starts, steps, self.aggregator)
            self.factors = self.aggregator.aggregate(updates, self.global_rank, previous=self.factors)
            self.head = average_states([o.head for o in usable], [o.num_samples for o in usable])
            self._track_device_importance(usable)
        metrics = self.after_aggregation(rnd, outcomes)
        if self.ctx.config.rounds.time_model:
            self._observe_round(outcomes)
            metrics["time_budget_s"] = self.policy.budget
        if self.prune_global:
            metrics["pruned_this_round"] = float(self.global_prune_step(rnd))
        return metrics

    def _observe_round(self, outcomes: Sequence[ClientOutcome]) -> None:
        """Fold each finished device's measured phases into its learned speeds (``rounds.time_model``)."""
        for outcome in outcomes:
            work = self._round_work.get(outcome.client_id)
            metrics = outcome.metrics
            if work is None or not math.isfinite(metrics.sim_compute_s):
                continue
            measured = ArmWork(work.compute, float(metrics.bytes_down), float(metrics.bytes_up))
            self.policy.observe(
                outcome.client_id,
                measured,
                metrics.sim_compute_s,
                metrics.sim_download_s,
                metrics.sim_upload_s,
            )

    # ------------------------------------------------------------------ what an option asks of a device
    def predicted_time(self, client_id: int, ratio: float, rank: int) -> float:
        """Predicted seconds of ``client_id``'s round at (ratio, rank); ``nan`` for an unobserved device."""
        return self.policy.predict(client_id, self.arm_work(client_id, ratio, rank))

    def arm_work(self, client_id: int, ratio: float, rank: int) -> ArmWork:
        """Compute and bytes (ratio, rank) asks of this device now, from the sub-model's units and what it holds.

        Compute is the sub-model's Linear parameters (training FLOPs per token are proportional). Down:
        the units the device lacks, or the whole sub-model if it holds none, plus adapters and head; up:
        adapters and head. Merges of earlier global prunes are low-rank and left out.
        """
        held_key = self.ctx.held_base(client_id)
        cache_key = (held_key, ratio)
        if cache_key not in self._base_work:
            self._base_work[cache_key] = self._base_cost(held_key, self._device_side_split(ratio)[0])
        compute, base_bytes = self._base_work[cache_key]
        costs = self._unit_costs()
        adapters = adapter_bytes(costs["target_shapes"], rank, costs["element_bytes"]) + costs["head_bytes"]
        return ArmWork(compute=compute, bytes_down=base_bytes + adapters, bytes_up=float(adapters))

    def _base_cost(self, held_key: Hashable | None, ratio: float) -> tuple[float, float]:
        """(compute, base bytes down) of the sub-model at ``ratio`` for a device holding ``held_key``."""
        self._submodel(ratio)
        plan = self._issued[(self.version, ratio)]
        costs = self._unit_costs()
        units = costs["units"]
        per_unit = {"attention": units.params_per_attention_unit, "mlp": units.params_per_channel}
        current = {"attention": units.attention_units, "mlp": units.mlp_channels}
        removed = sum(
            (current[kind][layer] - len(getattr(plan, kind)[layer])) * per_unit[kind][layer]
            for layer in plan.layers
            for kind in per_unit
        )
        held = self._issued.get(held_key) if held_key is not None else None  # type: ignore[arg-type]
        if held is None:
            base_params = costs["params"] - removed
        else:
            base_params = sum(
                len(set(getattr(plan, kind)[layer]) - set(getattr(held, kind).get(layer, ())))
                * per_unit[kind][layer]
                for layer in plan.layers
                for kind in per_unit
            )
        return float(costs["linear_params"] - removed), float(base_params * costs["element_bytes"])

    def _unit_costs(self) -> dict[str, Any]:
        """Unit counts and sizes of the current global model, computed once per global version."""
        if self._unit_costs_cache is None or self._unit_costs_cache[0] != self.version:
            model = self.ctx.global_model
            self._unit_costs_cache = (
                self.version,
                {
                    "units": prunable_units(model),
                    "params": count_parameters(model),
                    "linear_params": linear_params(model),
                    "element_bytes": next(model.parameters()).element_size(),
                    "target_shapes": lora_target_shapes(model, self.ctx.lora_targets),
                    "head_bytes": tensor_bytes(self.head),
                },
            )
        return self._unit_costs_cache[1]

    def evaluation_model(self) -> nn.Module:
        model = copy.deepcopy(self.ctx.global_model)
        merge_lora_delta(model, self.factors)
        model.load_state_dict(self.head, strict=False)
        return model.eval()

    def base_model(self, base_key: Hashable) -> nn.Module:
        """The sub-model ``(version, ratio)`` of this round (sharing the global model's tensors)."""
        version, ratio = base_key  # type: ignore[misc]
        if version != self.version or ratio not in self._round_plans:
            raise KeyError(f"base {base_key!r} was not configured this round (global version {self.version})")
        build, _ = self._round_plans[ratio]
        return build()

    def global_metrics(self) -> dict[str, float]:
        return {"sparsity": float(prunable_units(self.ctx.global_model).sparsity)}

    # ------------------------------------------------------------------ helpers
    def _fresh_factors(self, seed: int) -> Factors:
        shapes = lora_target_shapes(self.ctx.global_model, self.ctx.lora_targets)
        return init_factors(shapes, self.global_rank, seed=seed)

    def importance(self) -> UnitImportance:
        """Unit importance of the current global model (adapters merged), computed once per version.

        Once devices have reported LoRA-gradient scores (``pruning.where: client``) their aggregate is used;
        until then, and in server mode, the server scores units with ``pruning.importance``.
        """
        if self._importance is None:
            self._importance = self._reported_importance()
        if self._importance is None:
            cfg = self.ctx.config.pruning
            model = self.evaluation_model()
            batches = self.ctx.calibration_batches if cfg.importance == "taylor" else None
            self._importance = self.ctx.backend.importance(model, cfg.importance, batches)
        return self._importance

    def _reported_importance(self) -> UnitImportance | None:
        """The devices' aggregated scores for the current global model's units, if any were reported."""
        if not self.device_importance:
            return None
        scores = self.device_importance.for_plan(self.global_units)
        return UnitImportance(attention=scores["attention"], mlp=scores["mlp"], method="device_lora_gradient")

    def _track_device_importance(self, usable: Sequence[ClientOutcome]) -> None:
        """Fold this round's device-side scores (if any) into the server's aggregate, in original units."""
        reports = []
        for outcome in usable:
            result = outcome.local_pruning
            if result is None:
                continue
            plan = self._issued[(self.version, outcome.assignment.base_ratio)]
            reports.append((plan, result.scores, float(outcome.num_samples)))
        if reports:
            units = prunable_units(self.ctx.global_model)
            original = {
                "attention": dict(enumerate(units.original_attention_units)),
                "mlp": dict(enumerate(units.original_mlp_channels)),
            }
            self.device_importance.update(reports, original)
            self._importance = None

    def _submodel(self, ratio: float) -> tuple[Callable[[], nn.Module], IndexMap]:
        """Builder of the sub-model at ``ratio`` and its coordinate map; one per distinct ratio per round."""
        if ratio not in self._round_plans:
            if ratio == 0.0:
                self._round_plans[ratio] = (lambda: self.ctx.global_model, {})
                self._issued[(self.version, ratio)] = self.global_units
            else:
                cfg = self.ctx.config.pruning
                plan = plan_for_ratio(
                    self.importance(), ratio, cfg.protected_layers, prune_attention=cfg.prune_attention
                )
                index_map = linear_index_map(self.ctx.global_model, plan)
                self._round_plans[ratio] = (
                    lambda: submodel_sharing_weights(self.ctx.global_model, plan),
                    index_map,
                )
                self._issued[(self.version, ratio)] = self.global_units.compose(plan)
        return self._round_plans[ratio]

    def derivation(self, held_key: Hashable, target_key: Hashable) -> Derivation | None:
        """How a device holding ``held_key``'s sub-model builds ``target_key``'s without a full download.

        Units it holds get the merges logged since its version; units it lacks are sent whole (current
        global weights). Returns ``None`` when the held sub-model is unknown (never issued by this run).
        """
        held, target = self._issued.get(held_key), self._issued.get(target_key)  # type: ignore[arg-type]
        if held is None or target is None:
            return None
        index_map = linear_index_map(self.ctx.global_model, held, validate=False)
        held_version, target_version = held_key[0], target_key[0]  # type: ignore[index]
        merges = [  # versions pruned with pruning.carry_adapters merged nothing
            lora_to_sub(self.merge_log[v], index_map)
            for v in range(held_version + 1, target_version + 1)
            if v in self.merge_log
        ]
        plan = relative_plan(held, target)
        if plan is not None:
            return Derivation(merges=merges, plan=plan)
        plan = PruningPlan()
        missing: dict[int, dict[str, list[int]]] = {}  # in current global coordinates
        for layer in target.layers:
            for kind in ("attention", "mlp"):
                held_units = getattr(held, kind)[layer]
                held_set = set(held_units)
                lacking = [u for u in getattr(target, kind)[layer] if u not in held_set]
                order = {u: j for j, u in enumerate(held_units + lacking)}
                getattr(plan, kind)[layer] = [order[u] for u in getattr(target, kind)[layer]]
                in_global = {u: j for j, u in enumerate(getattr(self.global_units, kind)[layer])}
                missing.setdefault(layer, {})[kind] = [in_global[u] for u in lacking]
        return Derivation(merges=merges, plan=plan, new_units=unit_slices(self.ctx.global_model, missing))

    def merge_and_prune(self, plan_fn: Callable[[nn.Module], PruningPlan]) -> None:
        """Prune the global model with the plan ``plan_fn`` draws from a model with the adapter merged.

        By default the global adapter is merged into the base first and logged in original coordinates
        (devices replay the merge), and fresh adapters follow: B = 0, so the next round's first local
        steps move B only. With ``pruning.carry_adapters`` the base is pruned as it is and the adapter
        keeps its factors on the surviving units instead; nothing is merged, so devices replay nothing.
        """
        model = self.ctx.global_model
        model.load_state_dict(self.head, strict=False)
        if self.ctx.config.pruning.carry_adapters:
            plan = plan_fn(self.evaluation_model())  # score what the devices' model computes
            next_factors = lora_to_sub(self.factors, linear_index_map(model, plan))
        else:
            index_map = linear_index_map(model, self.global_units, validate=False)
            merged = lora_to_global(self.factors, index_map, self.original_shapes)
            merge_lora_delta(model, self.factors)  # keep what LoRA learned before units disappear
            plan = plan_fn(model)
            self.merge_log[self.version + 1] = merged
            next_factors = None  # fresh ones, seeded with the new version, once the model is pruned
        apply_plan(model, plan)
        self.global_units = self.global_units.compose(plan)
        self.version += 1
        self._importance = None
        self.factors = (
            self._fresh_factors(seed=self.ctx.config.seed + self.version)
            if next_factors is None
            else next_factors
        )

    # ------------------------------------------------------------------ iterative global pruning
    def global_prune_step(self, rnd: int) -> bool:
        """Prune the global model to this round's scheduled sparsity (adapters merged first).

        With ``pruning.min_steps: k`` one step adds at most ``target_sparsity / k``: when a run has few, long
        rounds (a task with long texts, a slow population) the time-based schedule would otherwise reach most
        of the target in the first round, before the adapters have learned anything to merge, and the model
        never recovers in the time left. A capped schedule goes on past its end until the target is reached.
        """
        cfg = self.ctx.config.pruning
        if self.pruning_done or rnd % cfg.prune_every != 0 or cfg.target_sparsity <= 0:
            return False
        progress = self.pruning_progress(rnd)
        scheduled = sparsity_at_progress(cfg.schedule, cfg.target_sparsity, progress)
        step = cfg.target_sparsity / cfg.min_steps
        current = prunable_units(self.ctx.global_model).sparsity
        capped = scheduled > current + step + 1e-9
        # the step that reaches the schedule's end uncapped prunes to the target; later ones would only churn
        self.pruning_done = progress >= 1.0 and not capped
        return self.prune_to(current + step if capped else scheduled)

    def pruning_progress(self, rnd: int) -> float:
        """How far the pruning phase (``pruning.end_fraction`` of the run) is after round ``rnd``.

        In rounds by default; in simulated seconds when ``training.max_sim_time_s`` sets a time budget, so
        a method whose rounds are short prunes over more rounds instead of reaching the target sparsity
        early in its budget. Values above 1 mean the phase is over.
        """
        cfg = self.ctx.config
        budget = cfg.training.max_sim_time_s
        if budget is None:
            return rnd / self.prune_rounds
        return self.ctx.sim_clock_s() / (budget * cfg.pruning.end_fraction)

    def prune_to(self, target: float) -> bool:
        """Prune the global model to global sparsity ``target`` (no-op if already there); see :meth:`merge_and_prune`.

        Units are scored with the adapter merged, on the model the devices train: by the devices' aggregated
        scores when they reported some (``pruning.where: client``), else by ``pruning.importance``.
        """
        cfg = self.ctx.config.pruning
        model = self.ctx.global_model
        if target <= prunable_units(model).sparsity + 1e-9:
            return False

        server_scores: list[tuple[UnitImportance, PruningPlan]] = []

        def plan(scored: nn.Module) -> PruningPlan:
            importance = self._reported_importance()
            server_scored = importance is None
            if importance is None:
                batches = self.ctx.calibration_batches if cfg.importance == "taylor" else None
                importance = self.ctx.backend.importance(scored, cfg.importance, batches)
            ratio = ratio_for_sparsity(model, target, cfg.protected_layers, cfg.prune_attention)
            units = prunable_units(model)
            chosen = plan_for_original_ratio(
                importance,
                ratio,
                dict(enumerate(units.original_attention_units)),
                dict(enumerate(units.original_mlp_channels)),
                cfg.protected_layers,
                cfg.prune_attention,
            )
            if server_scored:
                server_scores.append((importance, chosen))
            return chosen

        self.merge_and_prune(plan)
        if server_scores and not cfg.rescore_after_prune:
            importance, chosen = server_scores[0]
            self._importance = kept_importance(importance, chosen)  # importance() would run a second pass
        return True

    # ------------------------------------------------------------------ merging without pruning (issue 26)
    def merge_into_base(self, factors: Factors) -> None:
        """Add ``factors``' delta ``B @ A`` (current global coordinates) to the global base as a new version.

        For methods whose global state is the base model itself (FLoRA merges its stacked adapter every
        round, strategies/flora.py). Like a prune step's merge it is logged in original coordinates, so a
        device holding an earlier version replays it (:meth:`derivation`: only the factors cross the
        network) instead of downloading the model again; the units are unchanged. The caller decides what
        the global adapter becomes afterwards.
        """
        model = self.ctx.global_model
        index_map = linear_index_map(model, self.global_units, validate=False)
        self.merge_log[self.version + 1] = lora_to_global(factors, index_map, self.original_shapes)
        merge_lora_delta(model, factors)
        self.version += 1
        self._importance = None


def _coverage_masks(
    index_map: IndexMap, global_shapes: dict[str, tuple[int, int]]
) -> dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]:
    """Boolean masks of the global rows/columns a sub-model covered (for coverage-aware aggregation)."""
    masks = {}
    for name, (rows, cols) in index_map.items():
        out_features, in_features = global_shapes[name]
        row_mask = (
            None if rows is None else torch.zeros(out_features, dtype=torch.bool).index_fill_(0, rows, True)
        )
        col_mask = (
            None if cols is None else torch.zeros(in_features, dtype=torch.bool).index_fill_(0, cols, True)
        )
        masks[name] = (row_mask, col_mask)
    return masks
