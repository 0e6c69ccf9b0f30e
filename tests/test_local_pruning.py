"""Device-side iterative pruning (``pruning.where: client``): masks, LoRA-gradient scores, server aggregate."""

import copy

import numpy as np
import pytest
import torch

from fedspine_ray.data.tokens import TokenizedSplit
from fedspine_ray.messages import ClientOutcome, FitTask
from fedspine_ray.modeling.adapters import attach_lora, extract_factors, load_factors
from fedspine_ray.modeling.loading import head_module_names, load_classifier, lora_targets
from fedspine_ray.pruning import PruningPlan, extract_submodel, identity_plan, prunable_units
from fedspine_ray.pruning.local import ImportanceTracker, LocalPruner, LocalPruningTask
from fedspine_ray.runtime.client import FederatedClient
from fedspine_ray.strategies import build_strategy

from .test_strategies import make_context


def _batch(n: int = 6, length: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(5, 500, (n, length), generator=generator),
        "attention_mask": torch.ones(n, length, dtype=torch.long),
        "labels": torch.randint(0, 2, (n,), generator=generator),
    }


@pytest.fixture()
def wrapped(tiny_llama_dir):
    base = load_classifier(tiny_llama_dir, num_labels=2, seed=0).eval()
    model = attach_lora(
        copy.deepcopy(base),
        rank=4,
        alpha=8,
        dropout=0.0,
        targets=lora_targets(base, "auto"),
        trainable_modules=head_module_names(base),
    )
    torch.manual_seed(1)  # non-zero B, so LoRA's delta and both factor gradients matter
    load_factors(model, {k: (a, torch.randn_like(b) * 0.02) for k, (a, b) in extract_factors(model).items()})
    return base, model


def _remove_one_everywhere(model) -> LocalPruningTask:
    units = prunable_units(model)
    layers = range(len(units.original_attention_units))
    return LocalPruningTask(
        remove={"attention": dict.fromkeys(layers, 1), "mlp": dict.fromkeys(layers, 8)}, every=2
    )


def test_masked_units_compute_exactly_like_physically_removed_units(wrapped):
    base, model = wrapped
    pruner = LocalPruner(model, _remove_one_everywhere(base), local_steps=4)
    model.eval()
    loss = model(**_batch()).loss
    loss.backward()
    pruner.after_backward()
    pruner.end_of_step(2)  # the only pruning point with every=2 and 4 steps: remove everything asked
    kept = {kind: {i: list(v) for i, v in layers.items()} for kind, layers in pruner.finish({}).kept.items()}
    for spec_units in kept["attention"].values():
        assert len(spec_units) == prunable_units(base).original_attention_units[0] - 1
    # re-install the same masks (finish removed them) and compare with the physically pruned sub-model
    pruner2 = LocalPruner(model, _remove_one_everywhere(base), local_steps=4)
    for kind in ("attention", "mlp"):
        for i, units in kept[kind].items():
            mask = torch.zeros_like(pruner2.masks[kind][i])
            mask[units] = True
            pruner2.masks[kind][i] = mask
    merged = copy.deepcopy(model).merge_and_unload()
    plan = PruningPlan(attention=kept["attention"], mlp=kept["mlp"])
    plan.base_units = identity_plan(base).base_units
    plan.base_channels = identity_plan(base).base_channels
    sub = extract_submodel(merged, plan).eval()
    batch = _batch(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, sub(**batch).logits, rtol=1e-4, atol=1e-5)
    pruner2.remove_hooks()
    with torch.no_grad():  # hooks gone: the full model again
        torch.testing.assert_close(model(**batch).logits, merged(**batch).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("importance", ["activation", "lora_gradient"])
def test_scores_schedule_flops_and_zeroed_adapters(wrapped, importance):
    base, model = wrapped
    task = LocalPruningTask(
        remove={"attention": {0: 1, 1: 1}, "mlp": {0: 6, 1: 6}}, every=2, importance=importance
    )
    assert task.points(6) == [2, 4] and task.points(2) == [1]
    pruner = LocalPruner(model, task, local_steps=6)
    removed_after = []
    for step in range(1, 7):
        model.zero_grad(set_to_none=True)
        model(**_batch(seed=step)).loss.backward()
        pruner.after_backward()
        pruner.end_of_step(step)
        removed_after.append(sum(int((~m).sum()) for m in pruner.masks["mlp"].values()))
    assert removed_after == [0, 6, 6, 12, 12, 12]  # half of the removal at step 2, the rest at step 4
    for layer_scores in pruner.scores["mlp"].values():
        assert torch.isfinite(layer_scores).all() and (layer_scores > 0).all()
    factors = extract_factors(model)
    result = pruner.finish(factors)
    assert result.removed == 2 + 12
    assert 0.5 < result.flops_scale < 1.0
    # steps 1-2 ran unpruned (units go after step 2's update), 3-4 at half the removal, 5-6 at all of it
    assert result.history[:2] == [1.0, 1.0] and result.history[-1] < result.history[2] < 1.0
    # the removed units were the lowest-scored at their pruning point, and their adapter rows are zero
    for i, kept in result.kept["mlp"].items():
        dropped = sorted(set(range(len(result.scores["mlp"][i]))) - set(kept))
        assert len(dropped) == 6
        a_down, _ = factors[f"model.layers.{i}.mlp.down_proj"]
        _, b_up = factors[f"model.layers.{i}.mlp.up_proj"]
        assert a_down[:, dropped].abs().sum() == 0 and b_up[dropped].abs().sum() == 0
        assert a_down[:, kept].abs().sum() > 0


@pytest.fixture(scope="module")
def phi3_dir(tmp_path_factory):
    from fedspine_ray.modeling.loading import create_tiny_decoder

    return create_tiny_decoder(tmp_path_factory.mktemp("tiny-phi3"), "phi3")


@pytest.mark.parametrize("importance", ["activation", "lora_gradient"])
def test_fused_projections_phi3_mask_score_and_zero_every_part(phi3_dir, importance):
    """Phi-3 stores q, k, v in one ``qkv_proj`` and gate, up in one ``gate_up_proj``: a removed unit's adapter
    rows are zeroed in every part, scores cover all of a unit's elements, and masking == removing."""
    from fedspine_ray.modeling.loading import load_causal_lm
    from fedspine_ray.pruning import layer_specs

    base = load_causal_lm(phi3_dir)
    model = attach_lora(copy.deepcopy(base), 4, 8, 0.0, lora_targets(base, "auto"), [])
    torch.manual_seed(1)
    load_factors(model, {k: (a, torch.randn_like(b) * 0.02) for k, (a, b) in extract_factors(model).items()})
    task = LocalPruningTask(
        remove={"attention": {0: 1, 1: 1}, "mlp": {0: 16, 1: 16}}, every=1, importance=importance
    )
    pruner = LocalPruner(model, task, local_steps=2)
    ids = torch.randint(5, 500, (3, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    model(**batch).loss.backward()
    pruner.after_backward()
    for kind in ("attention", "mlp"):
        for scores in pruner.scores[kind].values():
            assert torch.isfinite(scores).all() and (scores > 0).all()
    pruner.end_of_step(1)
    kept_masks = {kind: {i: m.clone() for i, m in layers.items()} for kind, layers in pruner.masks.items()}
    model.eval()
    with torch.no_grad():
        masked_logits = model(**batch).logits
    factors = extract_factors(model)
    result = pruner.finish(factors)
    assert result.removed == 2 + 32
    specs = {s.index: s for s in layer_specs(base)}
    for i, spec in specs.items():
        removed_units = torch.nonzero(~kept_masks["attention"][i]).flatten()
        removed_channels = torch.nonzero(~kept_masks["mlp"][i]).flatten()
        qkv = next(s for s in spec.attention if s.name.endswith("qkv_proj"))
        gate_up = next(s for s in spec.mlp if s.name.endswith("gate_up_proj"))
        assert qkv.fused and gate_up.fused
        _, b_qkv = factors[f"model.layers.{i}.self_attn.qkv_proj"]
        _, b_gate_up = factors[f"model.layers.{i}.mlp.gate_up_proj"]
        rows = qkv.indices(removed_units, spec.n_units)
        assert len(rows) == len(removed_units) * qkv.width  # q rows, k rows and v rows of the unit
        assert b_qkv[rows].abs().sum() == 0
        other = torch.ones(b_qkv.shape[0], dtype=torch.bool)
        other[rows] = False
        assert b_qkv[other].abs().sum() > 0  # only the removed unit's rows, not a contiguous block
        channel_rows = gate_up.indices(removed_channels, spec.n_channels)
        assert len(channel_rows) == 2 * len(removed_channels)  # its gate row and its up row
        assert b_gate_up[channel_rows].abs().sum() == 0
    # the masked forward equals the physically pruned sub-model (merged adapters, surviving units)
    merged = copy.deepcopy(model).merge_and_unload()
    plan = PruningPlan(
        attention={i: torch.nonzero(m).flatten().tolist() for i, m in kept_masks["attention"].items()},
        mlp={i: torch.nonzero(m).flatten().tolist() for i, m in kept_masks["mlp"].items()},
    )
    plan.base_units = identity_plan(base).base_units
    plan.base_channels = identity_plan(base).base_channels
    with torch.no_grad():
        torch.testing.assert_close(
            extract_submodel(merged, plan).eval()(**batch).logits, masked_logits, rtol=1e-4, atol=1e-5
        )


def test_importance_tracker_normalises_weights_and_smooths():
    tracker = ImportanceTracker(smoothing=0.5)
    assert not tracker
    original = {"attention": {0: 4}, "mlp": {0: 4}}
    plan_a = PruningPlan(attention={0: [0, 1, 2, 3]}, mlp={0: [0, 1, 2, 3]})
    plan_b = PruningPlan(attention={0: [1, 3]}, mlp={0: [0, 1]})
    scores_a = {"attention": {0: torch.tensor([1.0, 2.0, 3.0, 2.0])}, "mlp": {0: torch.ones(4)}}
    scores_b = {"attention": {0: torch.tensor([10.0, 30.0])}, "mlp": {0: torch.tensor([1.0, 3.0])}}
    tracker.update([(plan_a, scores_a, 1.0), (plan_b, scores_b, 3.0)], original)
    # a: mean 2 -> [0.5, 1, 1.5, 1]; b: mean 20 -> units 1, 3 get [0.5, 1.5]; weighted 1:3
    expected = torch.tensor([0.5, (1 * 1 + 3 * 0.5) / 4, 1.5, (1 * 1 + 3 * 1.5) / 4], dtype=torch.float64)
    torch.testing.assert_close(tracker.scores["attention"][0], expected)
    tracker.update([(plan_b, scores_b, 1.0)], original)  # units 0, 2 not held: kept as they were
    smoothed = expected.clone()
    smoothed[1] = 0.5 * expected[1] + 0.5 * 0.5
    smoothed[3] = 0.5 * expected[3] + 0.5 * 1.5
    torch.testing.assert_close(tracker.scores["attention"][0], smoothed)
    view = tracker.for_plan(PruningPlan(attention={0: [1, 3]}, mlp={0: [2]}))
    torch.testing.assert_close(view["attention"][0], smoothed[[1, 3]].float())


def test_client_mode_round_keeps_derivation_exact_and_drives_global_pruning(tiny_llama_dir):
    ctx, batch = make_context(
        tiny_llama_dir,
        method={"name": "fedspine"},
        pruning={
            "target_sparsity": 0.5,
            "importance": "taylor",
            "end_fraction": 1.0,
            "where": "client",
            "local_share": 0.5,
            "local_prune_every": 1,
        },
        bandit={"pruning_ratios": [0.5], "ranks": [4]},
    )
    strategy = build_strategy("fedspine")
    strategy.setup(ctx)
    assignments = strategy.configure_round(1, [0, 1])
    assignment = assignments[0]
    assert assignment.pruning_ratio == 0.5 and assignment.submodel_ratio == 0.25
    assert assignment.local_pruning is not None and assignment.local_pruning.total_removed > 0
    data = TokenizedSplit(batch["input_ids"], batch["attention_mask"], batch["labels"])
    outcomes = []
    for cid, a in assignments.items():
        client = FederatedClient(cid, data, num_threads=1)
        sent = strategy.base_model(a.base_key)
        task = FitTask(
            round=1,
            base_key=a.base_key,
            rank=a.rank,
            factors=a.factors,
            head=a.head,
            local_steps=3,
            batch_size=4,
            lr=1e-2,
            weight_decay=0.0,
            lora_alpha=8.0,
            lora_dropout=0.0,
            lora_targets=ctx.lora_targets,
            head_modules=ctx.head_modules,
            seed=0,
            local_pruning=a.local_pruning,
        )
        reference = copy.deepcopy(sent).state_dict()
        result = client.fit(task, copy.deepcopy(sent))
        # the device's held base is the sub-model it was sent, untouched (only the trained head, which
        # every task overwrites, differs): derivations from it stay exact
        for name, tensor in client._base.state_dict().items():
            if any(name.startswith(h) for h in ctx.head_modules):
                continue
            torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0)
        assert result.local_pruning.removed == a.local_pruning.total_removed
        outcome = ClientOutcome(
            cid, a, 10, factors=result.factors, head=result.head, local_pruning=result.local_pruning
        )
        outcomes.append(outcome)
    strategy.aggregate_round(1, outcomes)
    assert strategy.device_importance.rounds == 1
    assert strategy.version == 1  # pruned on the schedule, scored by the devices' reports
    assert strategy._reported_importance().method == "device_lora_gradient"
    assert np.isclose(prunable_units(ctx.global_model).sparsity, 0.5, atol=0.1)


@pytest.mark.parametrize(
    ("method", "prune_global", "scored"),
    [("fedit", False, False), ("fedit", True, True), ("fedspine", False, True)],
)
def test_client_mode_asks_for_scores_only_where_something_is_pruned(
    tiny_llama_dir, method, prune_global, scored
):
    """Dense FedIT never uses unit scores, so ``where: client`` must not make its devices compute them; FedIT
    pruned globally (``method.prune_global``) prunes by them, so its devices score at ratio 0 too. FedSpine
    without global pruning still cuts sub-models by them, so its devices score even at ratio 0."""
    ctx, _ = make_context(
        tiny_llama_dir,
        method={"name": method, "prune_global": prune_global},
        pruning={"target_sparsity": 0.5 if prune_global else 0.0, "where": "client", "local_share": 0.0},
        bandit={"pruning_ratios": [0.0], "ranks": [4]},
    )
    strategy = build_strategy(method)
    strategy.setup(ctx)
    assignments = strategy.configure_round(1, [0, 1])
    assert {a.pruning_ratio for a in assignments.values()} == {0.0}
    assert all((a.local_pruning is not None) == scored for a in assignments.values())
    if scored:  # nothing to remove, only scores to report
        assert all(a.local_pruning.total_removed == 0 for a in assignments.values())
