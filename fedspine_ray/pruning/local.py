"""Device-side iterative pruning during local LoRA training (``pruning.where: client``).

FedSpine, as a reader of the full paper reports it (second-hand, see ../shared/notes/paper.md), prunes on
the devices while they fine-tune: every few local iterations a device removes the least important
attention units and MLP channels of its sub-model, scoring them with the gradients it already computes
for the LoRA factors (LoRAPrune-style), smoothed over iterations; LoRA tuning in between lets the
remaining units absorb what the removed ones did.

How it is simulated here, exactly and cheaply:

* A unit is removed by masking its input columns of the block's output projection (``o_proj`` /
  ``down_proj``, BERT ``attention.output.dense`` / ``output.dense``). For the forward pass this is the same
  function as physically deleting the unit (its query/key/value rows, gate/up rows and output columns),
  and it stops the gradients into the unit's LoRA rows, so nothing is learned for it. The device's base
  model is left intact, which keeps the derivation protocol (docs/architecture.md) exact.
* Compute saved by pruning mid-round is charged by the simulated clock: the device reports
  ``flops_scale``, the mean over its local steps of the FLOPs of the masked model over the unmasked one.
* Importance of a unit = sum over its weights of ``|(W + s·BA) ⊙ Ĝ|`` with the LoRAPrune gradient estimate
  ``Ĝ = ∂L/∂B · A + B · ∂L/∂A`` (both factors' gradients are computed by the LoRA step anyway), smoothed
  by an exponential moving average over local iterations.
* What goes back to the server: the kept units and the smoothed scores (sub-model coordinates). The
  adapter rows/columns of removed units are zeroed, so in global coordinates the device contributes
  nothing to units it pruned. The server aggregates the scores over devices for its own pruning
  decisions (:class:`ImportanceTracker`), so it needs no calibration data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from fedspine_ray.pruning.architectures import COLS, ROWS, LayerSpec, layer_specs, unit_view
from fedspine_ray.pruning.lora_mapping import Factors
from fedspine_ray.pruning.plan import PruningPlan

UnitScores = dict[str, dict[int, torch.Tensor]]  # {"attention"|"mlp": {layer: score per unit}}
KINDS = ("attention", "mlp")


@dataclass(frozen=True)
class LocalPruningTask:
    """What the server asks of a device: remove ``remove[kind][layer]`` more units over the local steps."""

    remove: dict[str, dict[int, int]]
    every: int
    smoothing: float = 0.8
    #: ``activation``: first-order Taylor of each unit's mask, ``|sum x * dL/dx|`` over the unit's inputs to
    #: the output projection; ``lora_gradient``: LoRAPrune's estimate from the factor gradients.
    importance: str = "activation"

    def points(self, local_steps: int) -> list[int]:
        """Local steps (1-based, after the step's update) at which units are removed, at least one."""
        points = [s for s in range(self.every, local_steps, self.every)]
        return points or [max(1, local_steps // 2)]

    @property
    def total_removed(self) -> int:
        return sum(sum(layer.values()) for layer in self.remove.values())


@dataclass
class LocalPruningResult:
    """A device's report: kept units (sub-model coordinates), smoothed scores, compute actually spent."""

    kept: dict[str, dict[int, list[int]]]
    scores: UnitScores
    flops_scale: float
    removed: int
    history: list[float] = field(default_factory=list)  # kept fraction of prunable weights per step


def _units_of(spec: LayerSpec, kind: str) -> int:
    return spec.n_units if kind == "attention" else spec.n_channels


def _slices(spec: LayerSpec, kind: str):
    return spec.attention if kind == "attention" else spec.mlp


def _lora_parts(module: nn.Module) -> tuple[torch.Tensor, nn.Parameter, nn.Parameter, float] | None:
    """(base weight, A, B, scaling) of a PEFT LoRA Linear, or None for a plain Linear."""
    adapters = getattr(module, "active_adapters", None)  # PEFT LoRA layers; the device trains one adapter
    if not adapters or adapters[0] not in getattr(module, "lora_A", {}):
        return None
    name = adapters[0]
    base = module.base_layer.weight
    return base, module.lora_A[name].weight, module.lora_B[name].weight, float(module.scaling[name])


class LocalPruner:
    """Masks, scores and progressively prunes the units of a PEFT-wrapped sub-model during local training.

    Use: create it on the wrapped model, call :meth:`after_backward` after every ``loss.backward()`` and
    :meth:`end_of_step` after every optimiser step; :meth:`finish` removes the hooks, zeroes the adapters
    of removed units in ``factors`` and returns the report.
    """

    def __init__(self, model: nn.Module, task: LocalPruningTask, local_steps: int) -> None:
        self.task = task
        self.specs = {spec.index: spec for spec in layer_specs(model)}
        self.points = set(task.points(local_steps))
        self.masks: dict[str, dict[int, torch.Tensor]] = {kind: {} for kind in KINDS}
        self.scores: UnitScores = {kind: {} for kind in KINDS}
        self._seen = 0
        self._hooks = []
        self._pending: UnitScores = {kind: {} for kind in KINDS}  # activation scores of this backward
        self._history: list[float] = []
        self._unit_params: dict[str, dict[int, int]] = {kind: {} for kind in KINDS}
        prunable = other = 0
        for index, spec in self.specs.items():
            for kind in KINDS:
                n = _units_of(spec, kind)
                self.masks[kind][index] = torch.ones(n, dtype=torch.bool)
                self.scores[kind][index] = torch.zeros(n, dtype=torch.float64)
                self._pending[kind][index] = torch.zeros(n, dtype=torch.float64)
                per_unit = 0
                for s in _slices(spec, kind):
                    weight = self._module(spec, s.name)
                    weight = weight.base_layer.weight if hasattr(weight, "base_layer") else weight.weight
                    per_unit += weight.numel() // n
                self._unit_params[kind][index] = per_unit
                prunable += per_unit * n
            col_slices = {s.name for kind in KINDS for s in _slices(spec, kind) if s.axis == COLS}
            for name in col_slices:
                self._hooks.append(self._module(spec, name).register_forward_pre_hook(self._hook(spec, name)))
        prunable_ids = {id(m) for m in self._prunable_linears()}
        for name, module in model.named_modules():  # the base model's other Linears (LoRA's own excluded)
            if isinstance(module, nn.Linear) and id(module) not in prunable_ids and "lora_" not in name:
                other += module.weight.numel()
        self._prunable = prunable
        self._other = other

    # ------------------------------------------------------------------ plumbing
    @staticmethod
    def _module(spec: LayerSpec, name: str) -> nn.Module:
        return spec.block.get_submodule(name)

    def _prunable_linears(self) -> list[nn.Module]:
        out = []
        for spec in self.specs.values():
            for kind in KINDS:
                for s in _slices(spec, kind):
                    module = self._module(spec, s.name)
                    out.append(module.base_layer if hasattr(module, "base_layer") else module)
        return out

    def _column_mask(self, spec: LayerSpec, name: str) -> torch.Tensor | None:
        parts = []
        for kind in KINDS:
            for s in _slices(spec, kind):
                if s.name == name and s.axis == COLS:  # output projections are never fused: u owns a run
                    parts.append(self.masks[kind][spec.index].repeat_interleave(s.width))
        if not parts or all(bool(p.all()) for p in parts):
            return None
        mask = parts[0]
        for p in parts[1:]:
            mask = mask & p
        return mask

    def _hook(self, spec: LayerSpec, name: str):
        cols = [
            (kind, s.width)
            for kind in KINDS
            for s in _slices(spec, kind)
            if s.name == name and s.axis == COLS
        ]

        def hook(module: nn.Module, args: tuple) -> tuple | None:
            mask = self._column_mask(spec, name)
            x = args[0]
            if mask is not None:
                x = x * mask.to(dtype=x.dtype, device=x.device)
            if self.task.importance == "activation" and x.requires_grad:
                x.register_hook(self._taylor_hook(spec.index, x.detach(), cols))
            return None if mask is None else (x,) + tuple(args[1:])

        return hook

    def _taylor_hook(self, index: int, x: torch.Tensor, cols: list[tuple[str, int]]):
        """Gradient hook: ``|dL/dm_u| = |sum over the unit's columns and all tokens of x * dL/dx|``."""

        def on_grad(grad: torch.Tensor) -> None:
            per_column = (x * grad).reshape(-1, x.shape[-1]).sum(dim=0).double()
            for kind, width in cols:
                self._pending[kind][index] += per_column.reshape(-1, width).sum(dim=1).abs().cpu()  # GPU fits

        return on_grad

    # ------------------------------------------------------------------ training-loop callbacks
    @torch.no_grad()
    def after_backward(self) -> None:
        """Fold this iteration's unit importance into the smoothed scores."""
        beta = self.task.smoothing
        for index, spec in self.specs.items():
            for kind in KINDS:
                n = _units_of(spec, kind)
                step = self._pending[kind][index].clone()
                self._pending[kind][index].zero_()
                for s in _slices(spec, kind) if self.task.importance == "lora_gradient" else ():
                    parts = _lora_parts(self._module(spec, s.name))
                    if parts is None:
                        continue
                    base, a, b, scaling = parts
                    if a.grad is None or b.grad is None:
                        continue
                    grad = b.grad.float() @ a.float() + b.float() @ a.grad.float()
                    weight = base.float() + scaling * (b.float() @ a.float())
                    contribution = (weight * grad).abs()
                    # every element of a unit, all parts of a fused Linear (Phi-3 qkv_proj, gate_up_proj)
                    step += unit_view(contribution, s, n).sum(dim=1).double().cpu()  # scores stay on the CPU
                scores = self.scores[kind][index]
                scores.copy_(step if self._seen == 0 else beta * scores + (1 - beta) * step)
        self._seen += 1

    def end_of_step(self, step: int) -> None:
        """Record this step's compute; at a pruning point remove the next slice of units."""
        self._history.append(self._kept_fraction())
        if step not in self.points:
            return
        done = sorted(p for p in self.points if p <= step)
        share = len(done) / len(self.points)  # cumulative fraction of the removal done after this point
        for kind in KINDS:
            for index, total in self.task.remove[kind].items():
                mask = self.masks[kind][index]
                already = int((~mask).sum())
                goal = min(int(round(total * share)), int(mask.sum()) - 1 + already)
                extra = goal - already
                if extra <= 0:
                    continue
                scores = self.scores[kind][index].clone()
                scores[~mask] = float("inf")
                order = sorted(range(scores.numel()), key=lambda j: (float(scores[j]), -j))
                for j in order[:extra]:
                    mask[j] = False

    def _kept_fraction(self) -> float:
        kept = sum(
            int(self.masks[kind][i].sum()) * self._unit_params[kind][i] for kind in KINDS for i in self.specs
        )
        return kept / self._prunable if self._prunable else 1.0

    # ------------------------------------------------------------------ result
    def remove_hooks(self) -> None:
        """Take the masks off the model (idempotent); the model computes as if nothing was pruned again."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def finish(self, factors: Factors) -> LocalPruningResult:
        """Remove hooks, zero the adapters of removed units in ``factors`` (in place), build the report."""
        self.remove_hooks()
        prefixes = {index: spec.prefix for index, spec in self.specs.items()}
        for index, spec in self.specs.items():
            for kind in KINDS:
                removed = torch.nonzero(~self.masks[kind][index]).flatten()
                if removed.numel() == 0:
                    continue
                for s in _slices(spec, kind):
                    key = f"{prefixes[index]}.{s.name}"
                    if key not in factors:
                        continue
                    a, b = factors[key]
                    idx = s.indices(removed, _units_of(spec, kind))  # fused Linears: every part's rows
                    if s.axis == ROWS:
                        b[idx] = 0
                    else:
                        a[:, idx] = 0
        mean_kept = sum(self._history) / len(self._history) if self._history else 1.0
        total = self._prunable + self._other
        flops_scale = (self._other + self._prunable * mean_kept) / total if total else 1.0
        return LocalPruningResult(
            kept={
                kind: {i: torch.nonzero(m).flatten().tolist() for i, m in self.masks[kind].items()}
                for kind in KINDS
            },
            scores={kind: {i: s.float() for i, s in self.scores[kind].items()} for kind in KINDS},
            flops_scale=float(flops_scale),
            removed=int(sum(int((~m).sum()) for kind in KINDS for m in self.masks[kind].values())),
            history=list(self._history),
        )


def removal_counts(start: PruningPlan, target: PruningPlan) -> dict[str, dict[int, int]]:
    """Units per layer a device must remove on-device to go from ``start``'s sub-model to ``target``'s size.

    Plans are in the same (original) coordinates; only sizes matter, the device picks *which* units.
    """
    return {
        "attention": {i: len(start.attention[i]) - len(target.attention[i]) for i in start.attention},
        "mlp": {i: len(start.mlp[i]) - len(target.mlp[i]) for i in start.mlp},
    }


class ImportanceTracker:
    """Server-side aggregate of the devices' unit scores, in ORIGINAL unit coordinates (they never change).

    Each device's scores are normalised per layer and kind (divided by their mean) so devices with larger
    losses do not dominate; a round's estimate is the sample-weighted mean over the devices that held the
    unit, and rounds are combined by an exponential moving average (``smoothing``). Units no device held
    this round keep their previous estimate.
    """

    def __init__(self, smoothing: float = 0.5) -> None:
        self.smoothing = smoothing
        self.scores: UnitScores = {kind: {} for kind in KINDS}
        self.rounds = 0

    def __bool__(self) -> bool:
        return self.rounds > 0

    def update(
        self, reports: list[tuple[PruningPlan, UnitScores, float]], original: Mapping[str, Mapping[int, int]]
    ) -> None:
        """``reports``: (plan of the device's sub-model in original coordinates, its scores, weight)."""
        if not reports:
            return
        for kind in KINDS:
            for layer, n_orig in original[kind].items():
                total = torch.zeros(n_orig, dtype=torch.float64)
                weight = torch.zeros(n_orig, dtype=torch.float64)
                for plan, scores, w in reports:
                    units = getattr(plan, kind)[layer]
                    layer_scores = scores[kind][layer].double()
                    mean = float(layer_scores.mean())
                    if not mean > 0:
                        continue
                    idx = torch.as_tensor(units, dtype=torch.long)
                    total.index_add_(0, idx, w * layer_scores / mean)
                    weight.index_add_(0, idx, torch.full((len(units),), float(w), dtype=torch.float64))
                covered = weight > 0
                fresh = torch.where(covered, total / weight.clamp_min(1e-12), torch.zeros_like(total))
                previous = self.scores[kind].get(layer)
                if previous is None:
                    self.scores[kind][layer] = fresh
                else:
                    blended = self.smoothing * previous + (1 - self.smoothing) * fresh
                    self.scores[kind][layer] = torch.where(covered, blended, previous)
        self.rounds += 1

    def for_plan(self, plan: PruningPlan) -> dict[str, dict[int, torch.Tensor]]:
        """Scores of the units of a model whose units (original coordinates) are ``plan``'s."""
        return {
            kind: {
                layer: self.scores[kind][layer][torch.as_tensor(units, dtype=torch.long)].float()
                for layer, units in getattr(plan, kind).items()
            }
            for kind in KINDS
        }
