"""FedSpine (Yao et al., arXiv 2501.02438): iterative prune-and-tune with a per-device bandit.

Each round a per-device bandit picks (pruning ratio, LoRA rank); the device trains LoRA on the global
model pruned further by that ratio. Adapters from differently pruned sub-models are aggregated in global
coordinates: each sub-model's delta ``B @ A`` is zero outside its units, deltas are averaged and
re-factorised by SVD (``method.aggregation`` selects another rule, e.g. the coverage-aware
``fedspine``). On the pruning schedule the server merges the adapters into the base weights — so
nothing learned is lost — scores units (Taylor or magnitude) and prunes the global model toward
``pruning.target_sparsity``. The bandit is a grid UCB or S-UCB over the continuous (ratio, rank) space
(``bandit.algorithm: s_ucb``, fedspine_ray/bandits/sucb.py); it is rewarded with the multi-term reward (loss
improvement, pruning progress, LoRA-update importance, timeliness against the other clients' median
completion time) or the earlier progress + timeliness one (``bandit.reward``; docs/bandit.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedspine_ray.bandits import Arm, DeviceLearners, build_learners
from fedspine_ray.bandits.reward import fedspine_reward, multi_term_reward, pruning_progress, timeliness
from fedspine_ray.devices.workload import adapter_bytes, linear_params
from fedspine_ray.messages import ClientAssignment, ClientOutcome, tensor_bytes
from fedspine_ray.modeling.adapters import lora_target_shapes
from fedspine_ray.pruning import count_parameters, prunable_units
from fedspine_ray.rounds.time_model import ArmWork, DeviceTimeModel, round_budget
from fedspine_ray.strategies.base import ServerContext
from fedspine_ray.strategies.lora import LoRAStrategy


def _cheapest_first(ratio: float, rank: int) -> float:
    """Orders arms by how little they ask (largest ratio, then smallest rank): for devices never observed."""
    return -ratio + rank * 1e-6


class FedSpine(LoRAStrategy):
    name = "fedspine"
    #: Sample-weighted average of full deltas B@A in global coordinates, re-factorised by SVD. Measured on
    #: the shipped config it beat the coverage-aware factor average ("fedspine" aggregator, still
    #: selectable), whose mismatched B/A cross-terms made the global model unstable (see the issue notes).
    default_aggregation = "flexlora"
    prunes_globally = True

    def setup(self, ctx: ServerContext) -> None:
        bandit = ctx.config.bandit
        #: One learner per device (or one shared) of ``bandit.algorithm``: grid UCB or S-UCB.
        self.bandits: DeviceLearners = build_learners(bandit, ctx.config.clients.num_clients, ctx.config.seed)
        #: Per-device speeds learned from observed rounds (fedspine_ray/rounds/time_model.py; bandit.predict_time).
        self.time_model = DeviceTimeModel(bandit.time_gamma)
        #: The base each device holds, as the server tracks it: what an arm would make it download.
        self.held_base: dict[int, tuple[int, float]] = {}
        #: This round's selected clients, its time budget and the work of the arm each client plays.
        self._round_clients: list[int] = []
        self._budget: float | None = None
        self._round_work: dict[int, ArmWork] = {}
        self._base_work: dict[tuple[tuple[int, float] | None, float], tuple[float, float]] = {}
        self._unit_costs_cache: tuple[int, dict[str, Any]] | None = None
        super().setup(ctx)

    def max_rank(self) -> int:
        return max(self.ctx.config.bandit.ranks)

    def configure_round(self, rnd: int, client_ids: Sequence[int]) -> dict[int, ClientAssignment]:
        self._round_clients, self._budget, self._round_work, self._base_work = list(client_ids), None, {}, {}
        assignments = super().configure_round(rnd, client_ids)
        if self.ctx.config.bandit.fill_budget:
            self._fill_round(assignments)
        return assignments

    def _fill_round(self, assignments: dict[int, ClientAssignment]) -> None:
        """Give devices predicted to finish early as many more local steps as fit before the round ends.

        Under ``wait_all`` a round lasts as long as its slowest device at its cheapest arm (the budget
        without slack); a faster device would spend the rest of it idle. Here its compute is stretched to
        end at that time: ``steps = local_steps x (end - predicted transfer) / predicted compute``, at most
        ``fill_max_factor`` x ``local_steps`` and never fewer than ``local_steps``. The slowest device keeps
        its steps, so the round is not predicted to last longer. Its predicted work is scaled too, so the
        time model goes on measuring the device's speed, not the extra steps. Under a ``deadline`` policy
        that caps the budget, the end is ``deadline / (1 + time_slack)``, short of the deadline on purpose:
        a device that overruns it loses its whole update, one that overruns ``wait_all``'s end only
        lengthens the round. Beyond the paper (its devices train a fixed number of iterations);
        ``bandit.fill_budget``, off by default.
        """
        cfg = self.ctx.config
        budget = self.round_budget()
        if not math.isfinite(budget):
            return
        end = budget / (1.0 + cfg.bandit.time_slack)
        steps = cfg.training.local_steps
        for cid, assignment in assignments.items():
            work = self._round_work.get(cid)
            if work is None:
                continue
            compute_s, transfer_s = self.time_model.predict_phases(cid, work)
            if not compute_s > 0:  # never observed (nan) or no compute to stretch
                continue
            factor = min(cfg.bandit.fill_max_factor, (end - transfer_s) / compute_s)
            filled = max(steps, math.floor(steps * factor))
            if filled > steps:
                assignments[cid] = dataclasses.replace(assignment, local_steps=filled)
                self._round_work[cid] = ArmWork(work.compute * filled / steps, work.bytes_down, work.bytes_up)

    def choose(self, rnd: int, client_id: int) -> tuple[float, int, int | None]:
        """(ratio, rank, arm): the grid arm's index, or for S-UCB the id of the leaf cell played.

        With ``bandit.predict_time`` the bandit chooses only among arms predicted to finish within the
        round's budget (:meth:`round_budget`); a device never observed plays the cheapest arm (largest
        ratio, smallest rank), so an unknown phone cannot hold the first round back with the full model.
        """
        cost, budget = None, math.inf
        if self.ctx.config.bandit.predict_time:
            if self.time_model.knows(client_id):
                cost = lambda p, r: self.predicted_time(client_id, p, r)  # noqa: E731
                budget = self.round_budget()
            else:
                cost, budget = _cheapest_first, -math.inf
        arm = self.bandits.select(client_id, cost, budget)
        if cost is not None:
            self._round_work[client_id] = self.arm_work(client_id, arm.ratio, arm.rank)
        return arm.ratio, arm.rank, arm.key

    def after_aggregation(self, rnd: int, outcomes: Sequence[ClientOutcome]) -> dict[str, float]:
        rewards = self._reward_bandits(outcomes)
        self._observe_times(outcomes)
        metrics = {"mean_reward": float(np.mean(rewards)) if rewards else math.nan}
        if self._budget is not None:
            metrics["time_budget_s"] = self._budget
        return metrics

    # ------------------------------------------------------------------ round-time model
    def round_budget(self) -> float:
        """This round's budget: the slowest observed selected device at its cheapest arm, plus slack.

        Under a deadline policy it never exceeds the deadline. ``inf`` while no device was observed.
        """
        if self._budget is None:
            cfg = self.ctx.config
            ratio, rank = max(cfg.bandit.pruning_ratios), min(cfg.bandit.ranks)
            fastest = [
                self.predicted_time(cid, ratio, rank)
                for cid in self._round_clients
                if self.time_model.knows(cid)
            ]
            budget = round_budget(fastest, cfg.bandit.time_slack)
            if cfg.devices.round_policy == "deadline" and cfg.devices.deadline_s:
                budget = min(budget, float(cfg.devices.deadline_s))
            self._budget = budget
        return self._budget

    def predicted_time(self, client_id: int, ratio: float, rank: int) -> float:
        """Predicted seconds of ``client_id``'s round at (ratio, rank); ``nan`` for an unobserved device."""
        return self.time_model.predict(client_id, self.arm_work(client_id, ratio, rank))

    def arm_work(self, client_id: int, ratio: float, rank: int) -> ArmWork:
        """Compute and bytes the arm asks of this device now, from the sub-model's units and what it holds.

        Compute is the sub-model's Linear parameters (training FLOPs per token are proportional). Down:
        the units the device lacks, or the whole sub-model if it holds none, plus adapters and head; up:
        adapters and head. Merges of earlier global prunes are low-rank and left out.
        """
        held_key = self.held_base.get(client_id)
        cache_key = (held_key, ratio)
        if cache_key not in self._base_work:
            self._base_work[cache_key] = self._base_cost(held_key, self._device_side_split(ratio)[0])
        compute, base_bytes = self._base_work[cache_key]
        costs = self._unit_costs()
        adapters = adapter_bytes(costs["target_shapes"], rank, costs["element_bytes"]) + costs["head_bytes"]
        return ArmWork(compute=compute, bytes_down=base_bytes + adapters, bytes_up=float(adapters))

    def _base_cost(self, held_key: tuple[int, float] | None, ratio: float) -> tuple[float, float]:
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

    def _observe_times(self, outcomes: Sequence[ClientOutcome]) -> None:
        """Fold each finished device's measured phases into its speeds; track the base it now holds."""
        for outcome in outcomes:
            cid = outcome.client_id
            if outcome.status == "actor_died":
                self.held_base.pop(cid, None)
                continue
            if outcome.status != "oom":
                self.held_base[cid] = outcome.assignment.base_key  # type: ignore[assignment]
            work = self._round_work.get(cid)
            metrics = outcome.metrics
            if work is None or not math.isfinite(metrics.sim_compute_s):
                continue
            measured = ArmWork(work.compute, float(metrics.bytes_down), float(metrics.bytes_up))
            self.time_model.observe(
                cid, measured, metrics.sim_compute_s, metrics.sim_download_s, metrics.sim_upload_s
            )

    # ------------------------------------------------------------------ bandit feedback
    def _reference_time(self, outcome: ClientOutcome, outcomes: Sequence[ClientOutcome]) -> float:
        """The deadline, else the round's time budget, else the median completion time of the *other*
        clients this round.

        Leaving the device itself out matters: with a plain median, a slow device that is half the
        population moves the median with its own arm and sees no benefit from pruning.
        """
        devices = self.ctx.config.devices
        if devices.round_policy == "deadline" and devices.deadline_s:
            return float(devices.deadline_s)
        if self._budget is not None and math.isfinite(self._budget):
            return self._budget  # bandit.predict_time: finishing within the budget delayed nobody
        others = [o.sim_time_s for o in outcomes if o is not outcome and not o.failed and o.sim_time_s > 0]
        if others:
            return float(np.median(others))
        return outcome.sim_time_s if outcome.sim_time_s > 0 else 1.0

    def _reward_bandits(self, outcomes: Sequence[ClientOutcome]) -> list[float]:
        bandit = self.ctx.config.bandit
        terms = self._reward_terms(outcomes) if bandit.reward == "multi_term" else {}
        rewards = []
        for outcome in outcomes:
            if outcome.assignment.arm is None:
                continue
            failed = outcome.failed
            if bandit.reward == "multi_term":
                reward = multi_term_reward(
                    terms.get(outcome.client_id, {}), bandit.reward_weights, failed=failed
                )
            else:
                reward = fedspine_reward(
                    completion_time=outcome.sim_time_s if not failed else 1.0,
                    reference_time=self._reference_time(outcome, outcomes),
                    loss_before=None if failed else outcome.loss_first,
                    loss_after=None if failed else outcome.loss_last,
                    failed=failed,
                )
            assignment = outcome.assignment
            arm = Arm(assignment.pruning_ratio, assignment.rank, assignment.arm)
            if outcome.status == "oom":  # what follows for the device's larger arms is the learner's call
                self.bandits.failed(outcome.client_id, arm, reward)
            else:
                self.bandits.update(outcome.client_id, arm, reward)
            outcome.metrics.reward = reward
            outcome.metrics.reward_terms = dict(terms.get(outcome.client_id, {}))
            rewards.append(reward)
        return rewards

    def _reward_terms(self, outcomes: Sequence[ClientOutcome]) -> dict[int, dict[str, float]]:
        """Per successful client, the four terms of the multi-term reward (docs/bandit.md), each in [0, 1].

        ``loss`` and ``update`` are relative to the round's best client, so they compare devices that saw
        the same global model, and their scale does not drift as the loss falls over the rounds.
        """
        ok = [o for o in outcomes if o.assignment.arm is not None and not o.failed and o.sim_time_s > 0]
        sparsity = float(self.global_metrics()["sparsity"])
        target = self.ctx.config.pruning.target_sparsity
        gains = {o.client_id: _loss_gain(o) for o in ok}
        norms = {o.client_id: _update_norm(o) for o in ok}
        best_gain = max((g for g in gains.values() if math.isfinite(g)), default=0.0)
        best_norm = max(norms.values(), default=0.0)
        terms = {}
        for o in ok:
            gain = gains[o.client_id]  # nan (diverged) stays nan: multi_term_reward scores it a failure
            terms[o.client_id] = {
                "loss": gain / best_gain if best_gain > 0 else gain * 0.0,
                "pruning": pruning_progress(o.assignment.pruning_ratio, min(sparsity, 0.999), target),
                "update": norms[o.client_id] / best_norm if best_norm > 0 else 0.0,
                "time": timeliness(o.sim_time_s, self._reference_time(o, outcomes)),
            }
        return terms


def _loss_gain(outcome: ClientOutcome) -> float:
    """Relative local loss decrease of the round, ``(first - last) / first`` (``nan`` if it diverged)."""
    first, last = outcome.loss_first, outcome.loss_last
    if not (math.isfinite(first) and math.isfinite(last)):
        return math.nan
    return max(0.0, (first - last) / first) if first > 0 else 0.0


def _update_norm(outcome: ClientOutcome) -> float:
    """Frobenius norm of the device's LoRA update ``B A - B0 A0`` over all its modules.

    Computed in the sub-model's own coordinates (the device's start and end adapters share them), so it
    needs no index map; a bigger sub-model or rank that learns more moves its adapter further.
    """
    if outcome.factors is None:
        return 0.0
    total = 0.0
    start = outcome.assignment.factors
    with torch.no_grad():
        for name, (a, b) in outcome.factors.items():
            delta = b.float() @ a.float()
            if name in start:
                a0, b0 = start[name]
                if tuple(b0.shape[:1]) + tuple(a0.shape[1:]) == tuple(delta.shape):
                    delta = delta - b0.float() @ a0.float()
            total += float(delta.pow(2).sum())
    return math.sqrt(total)
