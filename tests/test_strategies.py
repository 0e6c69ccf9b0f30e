"""Strategy logic without Ray: sub-model derivation, heterogeneous aggregation round trip, rank assignment."""

import copy

import numpy as np
import pytest
import torch

from fedspine_ray.config import config_from_dict
from fedspine_ray.modeling.backend import TorchBackend
from fedspine_ray.modeling.loading import head_module_names, load_classifier, lora_targets
from fedspine_ray.pruning import prunable_units
from fedspine_ray.strategies import ServerContext, build_strategy
from fedspine_ray.strategies.capacity import rank_by_capacity


def make_context(model_dir, backend=None, calibration_batches=None, **sections):
    """A two-client server context on ``model_dir``; returns it with a random batch (the calibration batch
    unless ``calibration_batches`` is given). ``backend`` defaults to the context's own (torch)."""
    raw = {"model": {"path": str(model_dir)}, "clients": {"num_clients": 2}, "training": {"rounds": 1}}
    raw.update(sections)
    config = config_from_dict(raw)
    model = load_classifier(model_dir, num_labels=2, seed=0)
    torch.manual_seed(0)
    batch = {
        "input_ids": torch.randint(5, 500, (8, 12)),
        "attention_mask": torch.ones(8, 12, dtype=torch.long),
        "labels": torch.randint(0, 2, (8,)),
    }
    ctx = ServerContext(
        config=config,
        global_model=model,
        lora_targets=lora_targets(model, "auto"),
        head_modules=head_module_names(model),
        client_num_samples={0: 10, 1: 30},
        calibration_batches=[batch] if calibration_batches is None else calibration_batches,
        client_capacity={0: 1.0, 1: 5.0},
        **({} if backend is None else {"backend": backend}),
    )
    return ctx, batch


@pytest.mark.parametrize(("prune_attention", "target"), [(True, 0.5), (False, 0.3)])
def test_device_derives_new_submodel_from_held_one_exactly(tiny_llama_dir, prune_attention, target):
    ctx, batch = make_context(
        tiny_llama_dir,
        method={"name": "fedspine"},
        pruning={
            "target_sparsity": target,
            "importance": "taylor",
            "end_fraction": 1.0,
            "prune_attention": prune_attention,
        },
        bandit={"pruning_ratios": [0.0, 0.5], "ranks": [4]},
    )
    attention_units = prunable_units(ctx.global_model).attention_units
    strategy = build_strategy("fedspine")
    strategy.setup(ctx)
    build, _ = strategy._submodel(0.0)
    held_key, held = (0, 0.0), copy.deepcopy(build())
    # pretend clients trained: a non-zero global adapter, then the server's prune step merges it
    strategy.factors = {k: (a, torch.randn_like(b) * 0.05) for k, (a, b) in strategy.factors.items()}
    assert strategy.global_prune_step(1)
    assert prunable_units(ctx.global_model).sparsity == pytest.approx(target, abs=0.05)
    assert (prunable_units(ctx.global_model).attention_units == attention_units) is not prune_attention
    strategy._round_plans = {}
    build_new, _ = strategy._submodel(0.5)
    derivation = strategy.derivation(held_key, (1, 0.5))
    assert derivation is not None and len(derivation.merges) == 1
    # the derivation is far smaller than the model it replaces
    full_bytes = sum(t.numel() * 4 for t in build_new().state_dict().values())
    assert derivation.nbytes < full_bytes / 10
    from fedspine_ray.pruning import apply_plan, extend_and_select, merge_lora_delta

    for merge in derivation.merges:
        merge_lora_delta(held, merge)
    apply_plan(held, derivation.plan)
    expected = build_new()
    expected.eval()
    held.eval()
    held.load_state_dict(
        {k: v for k, v in expected.state_dict().items() if k.startswith("score.")}, strict=False
    )
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    torch.testing.assert_close(held(**inputs).logits, expected(**inputs).logits, atol=1e-5, rtol=1e-4)
    # a device moving to a larger sub-model receives only the units it lacks, and ends up exact too
    grown_from = copy.deepcopy(expected)
    build_full, _ = strategy._submodel(0.0)
    grow = strategy.derivation((1, 0.5), (1, 0.0))
    assert grow is not None and grow.new_units and not grow.merges
    full = build_full()
    full_bytes = sum(t.numel() * 4 for t in full.state_dict().values())
    assert grow.nbytes < full_bytes / 2
    extend_and_select(grown_from, grow.plan, grow.new_units)
    grown_from.eval()
    full.eval()
    torch.testing.assert_close(grown_from(**inputs).logits, full(**inputs).logits, atol=1e-5, rtol=1e-4)
    assert strategy.derivation((7, 0.5), (1, 0.0)) is None  # never issued: full download


def test_capacity_ranks_and_hetlora_setup(tiny_llama_dir):
    ctx, _ = make_context(tiny_llama_dir, method={"name": "hetlora"}, bandit={"ranks": [2, 4, 8]})
    assert rank_by_capacity(ctx, [8, 2, 4]) == {0: 2, 1: 8}
    strategy = build_strategy("hetlora")
    strategy.setup(ctx)
    assignments = strategy.configure_round(1, [0, 1])
    assert assignments[0].rank == 2 and assignments[1].rank == 8
    a, b = next(iter(assignments[0].factors.values()))
    assert a.shape[0] == 2 and b.shape[1] == 2


@pytest.mark.parametrize("prune_global", [True, None])
def test_baselines_prune_globally_only_when_asked(tiny_llama_dir, prune_global):
    ctx, _ = make_context(
        tiny_llama_dir,
        method={"name": "fedit", "prune_global": prune_global},
        pruning={"target_sparsity": 0.5, "importance": "magnitude", "end_fraction": 1.0},
    )
    strategy = build_strategy("fedit")
    strategy.setup(ctx)
    metrics = strategy.aggregate_round(1, [])
    sparsity = prunable_units(ctx.global_model).sparsity
    if prune_global:
        assert metrics["pruned_this_round"] == 1.0 and sparsity == pytest.approx(0.5, abs=0.05)
    else:
        assert "pruned_this_round" not in metrics and sparsity == 0.0


def fedspine_one_prune_step(model_dir, backend=None, **pruning):
    """FedSpine set up on ``model_dir`` whose first global prune step goes to sparsity 0.4 (Taylor scores):
    returns the context, its batch and the strategy. ``pruning`` adds to the pruning section."""
    ctx, batch = make_context(
        model_dir,
        backend=backend,
        method={"name": "fedspine"},
        pruning={"target_sparsity": 0.4, "importance": "taylor", "end_fraction": 1.0, **pruning},
        bandit={"pruning_ratios": [0.0, 0.5], "ranks": [4]},
    )
    strategy = build_strategy("fedspine")
    strategy.setup(ctx)
    return ctx, batch, strategy


def give_b_values(strategy) -> None:
    """Non-zero, seeded B factors on the global adapter, so a merge changes the model."""
    generator = torch.Generator().manual_seed(1)
    strategy.factors = {
        k: (a, torch.randn(b.shape, generator=generator) * 0.05) for k, (a, b) in strategy.factors.items()
    }


def test_carried_adapters_survive_a_prune_exactly_and_devices_replay_nothing(tiny_llama_dir):
    """``pruning.carry_adapters``: the pruned model computes what merge-then-prune computes (same plan,
    scored with the adapter merged), but the adapter keeps its non-zero factors instead of restarting."""
    models = {}
    for carry in (False, True):
        ctx, batch, strategy = fedspine_one_prune_step(tiny_llama_dir, carry_adapters=carry)
        build, _ = strategy._submodel(0.0)
        held = copy.deepcopy(build())
        give_b_values(strategy)
        before = copy.deepcopy(strategy.factors)
        assert strategy.global_prune_step(1)
        models[carry] = (strategy, held, before)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    merged, carried = models[False][0], models[True][0]
    assert merged.global_units.attention == carried.global_units.attention  # the same plan
    assert merged.global_units.mlp == carried.global_units.mlp
    torch.testing.assert_close(
        carried.evaluation_model()(**inputs).logits,
        merged.evaluation_model()(**inputs).logits,
        atol=1e-5,
        rtol=1e-4,
    )
    assert all(float(b.abs().sum()) == 0 for _, b in merged.factors.values())  # restarted
    assert all(float(b.abs().sum()) > 0 for _, b in carried.factors.values())  # kept, sliced to survivors
    name, (a_before, _) = next(iter(models[True][2].items()))
    assert carried.factors[name][0].shape[1] <= a_before.shape[1]
    # a device holding the unpruned model derives the pruned one without any merge, exactly
    strategy, held, _ = models[True]
    strategy._round_plans = {}
    build_new, _ = strategy._submodel(0.0)
    derivation = strategy.derivation((0, 0.0), (1, 0.0))
    assert derivation is not None and derivation.merges == []
    from fedspine_ray.pruning import apply_plan

    apply_plan(held, derivation.plan)
    expected = build_new()
    held.load_state_dict(
        {k: v for k, v in expected.state_dict().items() if k.startswith("score.")}, strict=False
    )
    held.eval()
    expected.eval()
    torch.testing.assert_close(held(**inputs).logits, expected(**inputs).logits, atol=1e-5, rtol=1e-4)


class CountingBackend(TorchBackend):
    """The torch backend, recording every importance pass and the scores it returned."""

    def __init__(self) -> None:
        super().__init__()
        self.passes: list = []

    def importance(self, model, method, batches=None):
        scores = super().importance(model, method, batches)
        self.passes.append(scores)
        return scores


@pytest.mark.parametrize("rescore", [True, False])
def test_prune_step_scores_reused_for_submodels_without_a_second_pass(tiny_llama_dir, rescore):
    """``pruning.rescore_after_prune: false``: the sub-models after a global prune step are ranked by the
    scores that chose the step, restricted to the surviving units (one Taylor pass instead of two)."""
    backend = CountingBackend()
    ctx, _, strategy = fedspine_one_prune_step(tiny_llama_dir, backend, rescore_after_prune=rescore)
    give_b_values(strategy)
    assert strategy.global_prune_step(1)
    units = prunable_units(ctx.global_model)
    used = strategy.importance()
    assert len(backend.passes) == (2 if rescore else 1)
    for i in range(len(units.mlp_channels)):  # scores match the pruned model's unit counts either way
        assert used.attention[i].numel() == units.attention_units[i]
        assert used.mlp[i].numel() == units.mlp_channels[i]
    step_scores, kept = backend.passes[0], strategy.global_units  # one step from the unpruned model
    if not rescore:
        assert used is strategy.importance()  # cached for the version: no pass when sub-models are cut
        for i in used.mlp:
            assert torch.equal(used.mlp[i], step_scores.mlp[i][kept.mlp[i]])
            assert torch.equal(used.attention[i], step_scores.attention[i][kept.attention[i]])
    else:
        assert used is backend.passes[1]
    build, _ = strategy._submodel(0.5)  # the sub-models are cut from whichever scores are cached
    assert prunable_units(build()).sparsity > units.sparsity
    assert len(backend.passes) == (2 if rescore else 1)


def test_schedule_reaches_the_target_even_when_prune_every_skips_its_last_round(tiny_llama_dir):
    """rounds 5 x end_fraction 1, prune_every 2: rounds 2 and 4 prune part-way, round 6 (past the phase)
    prunes to the target and ends the schedule; later rounds do nothing."""
    ctx, _ = make_context(
        tiny_llama_dir,
        training={"rounds": 5},
        method={"name": "fedit", "prune_global": True},
        pruning={"target_sparsity": 0.5, "schedule": "linear", "end_fraction": 1.0, "prune_every": 2},
    )
    strategy = build_strategy("fedit")
    strategy.setup(ctx)
    done = {rnd: strategy.global_prune_step(rnd) for rnd in range(1, 9)}
    assert [rnd for rnd, pruned in done.items() if pruned] == [2, 4, 6]
    assert strategy.pruning_done and strategy.version == 3
    assert prunable_units(ctx.global_model).sparsity == pytest.approx(0.5, abs=0.03)


def test_min_steps_spreads_a_schedule_that_would_prune_almost_all_at_once(tiny_llama_dir):
    """A first round that takes most of the time budget: the time-based schedule asks for nearly the whole
    target at once; pruning.min_steps: 3 prunes a third of it per step and goes on past the schedule's end."""
    ctx, _ = make_context(
        tiny_llama_dir,
        training={"rounds": 10, "max_sim_time_s": 10.0},
        method={"name": "fedit", "prune_global": True},
        pruning={
            "target_sparsity": 0.45,
            "schedule": "cubic",
            "end_fraction": 0.6,
            "min_steps": 3,
            "prune_attention": False,  # MLP channels: fine steps on the tiny model
        },
    )
    clock = {
        "now": 5.0
    }  # round 1 ended at 5 s of a 10 s budget: progress 5 / 6, cubic -> 99.5 % of the target
    ctx.sim_clock_s = lambda: clock["now"]
    strategy = build_strategy("fedit")
    strategy.setup(ctx)
    sparsity = []
    for rnd in range(1, 6):
        strategy.global_prune_step(rnd)
        sparsity.append(prunable_units(ctx.global_model).sparsity)
        clock["now"] += 1.0
    steps = np.diff([0.0, *sparsity])
    assert 0 < steps[0] <= 0.15 + 0.01 and (steps <= 0.15 + 0.01).all()  # one step: at most target / 3
    assert sparsity[1] < 0.4  # the uncapped schedule would have been at 0.45 after round 1
    reached = next(i for i, x in enumerate(sparsity) if x >= 0.45 - 0.05)
    assert reached >= 2 and strategy.pruning_done  # at least three steps, and then the schedule ends
    assert sparsity[reached:] == [sparsity[reached]] * (len(sparsity) - reached)  # nothing churns afterwards


def test_update_norm_equals_the_formed_update_without_forming_it():
    """FedSpine's update-importance term: ``||B A - B0 A0||_F`` over modules, where the start factors have
    another rank (a rank switch) or do not share the module's shape (left out), against the dense deltas."""
    from fedspine_ray.messages import ClientAssignment, ClientOutcome
    from fedspine_ray.strategies.fedspine import _update_norm

    g = torch.Generator().manual_seed(3)

    def factors(out, inn, r):
        return torch.randn(r, inn, generator=g), torch.randn(out, r, generator=g)

    start = {"q": factors(6, 5, 2), "v": factors(4, 5, 3), "o": factors(9, 9, 2)}
    end = {"q": factors(6, 5, 4), "v": factors(4, 5, 3), "o": factors(5, 9, 2), "new": factors(3, 2, 1)}
    assignment = ClientAssignment(base_key=(0, 0.0), rank=4, factors=start, head={})
    outcome = ClientOutcome(0, assignment, 10, factors=end)
    expected = 0.0
    for name, (a, b) in end.items():
        delta = (b @ a).double()
        if name in ("q", "v"):  # same (out, in) as the start: the start's product is subtracted
            a0, b0 = start[name]
            delta = delta - (b0 @ a0).double()
        expected += float(delta.pow(2).sum())
    assert _update_norm(outcome) == pytest.approx(expected**0.5, rel=1e-6)
    assert _update_norm(ClientOutcome(0, assignment, 10, factors=None)) == 0.0
