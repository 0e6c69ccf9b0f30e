"""Importance methods, nested plans, schedules and size/FLOPs bookkeeping."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForSequenceClassification,
)

from fedspine_ray.pruning import (
    IMPORTANCE_METHODS,
    SCHEDULES,
    apply_plan,
    compute_importance,
    count_parameters,
    flops_per_token,
    n_keep,
    plan_for_original_ratio,
    plan_for_ratio,
    plan_sparsity,
    prunable_units,
    ratio_for_sparsity,
    sparsity,
    sparsity_at_progress,
    sparsity_schedule,
)

from .test_pruning_apply import tiny_bert


def tiny_llama_cls() -> LlamaForSequenceClassification:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        num_attention_heads=8,
        num_key_value_heads=4,
        num_hidden_layers=3,
        intermediate_size=128,
        vocab_size=1000,
        pad_token_id=0,
        num_labels=3,
    )
    return LlamaForSequenceClassification(cfg).eval()


def batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return [
        {
            "input_ids": torch.randint(1, 1000, (4, 12), generator=g),
            "attention_mask": torch.ones(4, 12, dtype=torch.long),
            "labels": torch.randint(0, 3, (4,), generator=g),
        }
        for _ in range(n)
    ]


@pytest.mark.parametrize("build", [tiny_llama_cls, tiny_bert])
def test_taylor_uses_gradients_and_differs_from_magnitude(build) -> None:
    model = build()
    assert set(IMPORTANCE_METHODS) >= {"magnitude", "taylor"}
    mag = compute_importance(model, "magnitude")
    tay = compute_importance(model, "taylor", batches())
    assert tay.attention.keys() == mag.attention.keys()
    assert tay.attention[0].shape == mag.attention[0].shape == (4 if build is tiny_llama_cls else 8,)
    assert tay.mlp[0].shape == (128,)
    assert all(float(v.min()) >= 0 for v in tay.mlp.values())
    assert not torch.allclose(tay.mlp[0] / tay.mlp[0].sum(), mag.mlp[0] / mag.mlp[0].sum())
    # gradient-dependent: different data gives different scores; model grads are left clean
    tay2 = compute_importance(model, "taylor", batches(1)[:1] + [batches(3)[2]])
    assert not torch.allclose(tay.mlp[1], tay2.mlp[1])
    assert all(p.grad is None for p in model.parameters())
    # matches an explicit |w * dL/dw| computation for one channel
    ref = copy.deepcopy(model)
    ref.zero_grad()
    for b in batches():
        ref(**b).loss.backward()
    mods = dict(ref.named_modules())
    if build is tiny_llama_cls:
        rows = [mods["model.layers.0.mlp.gate_proj"], mods["model.layers.0.mlp.up_proj"]]
        col = mods["model.layers.0.mlp.down_proj"]
    else:
        rows, col = (
            [mods["bert.encoder.layer.0.intermediate.dense"]],
            mods["bert.encoder.layer.0.output.dense"],
        )
    want = sum((m.weight[0] * m.weight.grad[0]).abs().sum() for m in rows)
    want = want + sum((m.bias[0] * m.bias.grad[0]).abs() for m in rows if m.bias is not None)
    want = want + (col.weight[:, 0] * col.weight.grad[:, 0]).abs().sum()
    assert float(tay.mlp[0][0]) == pytest.approx(float(want.detach()), rel=1e-4)
    # only the prunable Linears need gradients: the scores equal those of a backward through every
    # parameter, bit for bit, and every requires_grad flag comes back as it was
    from fedspine_ray.pruning.importance import taylor_scores

    full = taylor_scores(ref)
    for layer in tay.mlp:
        assert torch.equal(tay.mlp[layer], full.mlp[layer])
        assert torch.equal(tay.attention[layer], full.attention[layer])
    frozen = next(iter(model.parameters()))
    frozen.requires_grad_(False)
    compute_importance(model, "taylor", batches())
    assert not frozen.requires_grad and all(p.requires_grad for p in list(model.parameters())[1:])
    with pytest.raises(ValueError):
        compute_importance(model, "taylor", None)
    with pytest.raises(ValueError):
        compute_importance(model, "nope")


def test_plans_are_nested_across_ratios() -> None:
    imp = compute_importance(tiny_bert(), "magnitude")
    ratios = [0.0, 0.1, 0.25, 0.5, 0.7, 0.9]
    plans = [plan_for_ratio(imp, r, protected_layers=[0]) for r in ratios]
    for lo, hi in zip(plans, plans[1:], strict=False):
        for i in lo.layers:
            assert set(hi.attention[i]) <= set(lo.attention[i])
            assert set(hi.mlp[i]) <= set(lo.mlp[i])
            assert hi.attention[i] == sorted(hi.attention[i])
    assert plans[-1].kept_units()[0] == 8  # protected
    assert plans[-1].kept_units()[1] == 1 and plans[-1].kept_channels()[2] == n_keep(128, 0.9)
    assert plans[0].is_identity()
    # ties are broken deterministically (by index)
    flat = copy.deepcopy(imp)
    flat.mlp = {i: torch.ones_like(v) for i, v in flat.mlp.items()}
    assert plan_for_ratio(flat, 0.5).mlp[0] == list(range(64))


def test_n_keep_rounding() -> None:
    assert n_keep(12, 0.5) == 6
    assert n_keep(12, 0.99) == 1
    assert n_keep(1, 0.9) == 1
    assert n_keep(4, 0.0) == 4
    assert [n_keep(10, r / 20) for r in range(21)] == sorted(
        [n_keep(10, r / 20) for r in range(21)], reverse=True
    )


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_schedules_monotone_and_hit_target(kind: str) -> None:
    vals = [sparsity_schedule(kind, 0.6, s, 10) for s in range(0, 13)]
    assert all(b >= a - 1e-12 for a, b in zip(vals, vals[1:], strict=False))
    assert vals[10] == pytest.approx(0.6) and vals[12] == pytest.approx(0.6)
    if kind in ("linear", "cubic"):
        assert vals[0] == 0.0
    if kind == "cubic":
        assert vals[3] > sparsity_schedule("linear", 0.6, 3, 10)  # front-loaded
    with pytest.raises(ValueError):
        sparsity_schedule("bogus", 0.5, 1, 2)


def test_sparsity_definition_and_progressive_global_pruning() -> None:
    model = tiny_bert()
    pu = prunable_units(model)
    assert pu.sparsity == 0.0 and pu.attention_units == [8, 8, 8] and pu.mlp_channels == [128] * 3
    # uniform ratio over all layers == sparsity (units of one layer own equal parameter counts)
    plan = plan_for_ratio(compute_importance(model), 0.5)
    assert plan_sparsity(plan, model) == pytest.approx(0.5)
    # protected layer: ratio_for_sparsity compensates so the global target is met
    r = ratio_for_sparsity(model, 0.4, protected_layers=[0])
    assert r == pytest.approx(0.6)
    for target in (0.2, 0.4):  # two schedule steps, ratios always vs. the ORIGINAL sizes
        r = ratio_for_sparsity(model, target, protected_layers=[0])
        pu = prunable_units(model)
        plan = plan_for_original_ratio(
            compute_importance(model),
            r,
            dict(enumerate(pu.original_attention_units)),
            dict(enumerate(pu.original_mlp_channels)),
            protected_layers=[0],
        )
        apply_plan(model, plan)
        assert sparsity(model) == pytest.approx(target, abs=0.03)
    assert prunable_units(model).attention_units[0] == 8


def test_channels_only_pruning_keeps_every_attention_unit_and_still_meets_the_target() -> None:
    model = tiny_llama_cls()
    imp = compute_importance(model)
    plan = plan_for_ratio(imp, 0.5, prune_attention=False)
    assert [len(units) for units in plan.attention.values()] == prunable_units(model).attention_units
    assert all(len(channels) == 64 for channels in plan.mlp.values())
    for target in (0.15, 0.3):  # progressive, vs. the original sizes: only MLP channels pay for the target
        r = ratio_for_sparsity(model, target, prune_attention=False)
        assert r > target  # channels are a fraction of the prunable weights, so each loses more
        pu = prunable_units(model)
        apply_plan(
            model,
            plan_for_original_ratio(
                compute_importance(model),
                r,
                dict(enumerate(pu.original_attention_units)),
                dict(enumerate(pu.original_mlp_channels)),
                prune_attention=False,
            ),
        )
        assert sparsity(model) == pytest.approx(target, abs=0.03)
        assert prunable_units(model).attention_units == pu.original_attention_units


def test_flops_and_params_shrink() -> None:
    model = tiny_llama_cls()
    dense_f, dense_p = flops_per_token(model, 32), count_parameters(model)
    h, v, i, n = 64, 1000, 128, 3
    q, kv = 64, 32
    per_layer = 2 * (h * q + 2 * h * kv + q * h + 3 * h * i) + 4 * 32 * q
    assert dense_f == pytest.approx(n * per_layer + 2 * h * 3)  # + score head (3 labels)
    assert dense_p == v * h + n * (h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h) + h + 3 * h
    apply_plan(model, plan_for_ratio(compute_importance(model), 0.5))
    assert flops_per_token(model, 32) < 0.6 * dense_f
    assert count_parameters(model) < dense_p


def test_sparsity_at_progress_is_the_schedule_on_a_fraction():
    # the round-counted schedule is the same curve sampled at step / total_steps
    for kind in ("linear", "cubic", "constant"):
        for step in range(0, 12):
            assert sparsity_at_progress(kind, 0.6, step / 10) == pytest.approx(
                sparsity_schedule(kind, 0.6, step, 10)
            )
    assert sparsity_at_progress("linear", 0.6, 0.25) == pytest.approx(0.15)
    assert sparsity_at_progress("cubic", 0.6, 0.5) == pytest.approx(0.6 * (1 - 0.5**3))
    assert (
        sparsity_at_progress("linear", 0.6, -1.0) == 0.0 and sparsity_at_progress("linear", 0.6, 7.0) == 0.6
    )
