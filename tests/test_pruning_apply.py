"""Physical pruning is exact: pruned logits == dense logits with the removed units zeroed."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from fedspine_ray.pruning import (
    PruningPlan,
    apply_plan,
    compute_importance,
    count_parameters,
    extract_submodel,
    identity_plan,
    layer_specs,
    load_pruned,
    plan_for_ratio,
    predicted_parameter_count,
    save_pruned,
    sparsity,
    submodel_sharing_weights,
)
from fedspine_ray.pruning.architectures import COLS, get_linear


def tiny_llama(layers: int = 3, bias: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=layers,
        intermediate_size=128,
        vocab_size=1000,
        pad_token_id=0,
        attention_bias=bias,
        mlp_bias=bias,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_bert(layers: int = 3) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=64,
        num_attention_heads=8,
        num_hidden_layers=layers,
        intermediate_size=128,
        vocab_size=1000,
        num_labels=3,
        max_position_embeddings=64,
    )
    return BertForSequenceClassification(cfg).eval()


def zeroed_copy(model: torch.nn.Module, plan: PruningPlan) -> torch.nn.Module:
    """Dense copy whose removed units contribute nothing: zero their output-projection columns.

    The reference every pruned model must equal (also for the decoder families of test_decoder_families).
    """
    dense = copy.deepcopy(model)
    with torch.no_grad():
        for spec in layer_specs(dense):
            for slices, kept, n in (
                (spec.attention, plan.attention[spec.index], spec.n_units),
                (spec.mlp, plan.mlp[spec.index], spec.n_channels),
            ):
                removed = sorted(set(range(n)) - set(kept))
                if removed:
                    s = slices[-1]  # the column-pruned output projection
                    assert s.axis == COLS
                    get_linear(spec, s).weight[:, s.indices(removed, n)] = 0.0
    return dense


def inputs(batch: int = 2, seq: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 1000, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


MODELS = {
    "llama": lambda: tiny_llama(),
    "llama_bias": lambda: tiny_llama(bias=True),
    "bert": lambda: tiny_bert(),
}


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_pruned_equals_zeroed_dense(arch: str) -> None:
    model = MODELS[arch]()
    imp = compute_importance(model, "magnitude")
    plan = plan_for_ratio(imp, 0.5, layer_ratios={0: 0.0, 2: 0.75})
    assert plan.kept_units()[0] == plan.base_units[0]
    assert len({len(v) for v in plan.mlp.values()}) == 3  # per-layer different sizes
    sub = extract_submodel(model, plan)
    ref = zeroed_copy(model, plan)
    x = inputs()
    with torch.no_grad():
        got, want = sub(**x).logits, ref(**x).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the global model is untouched by extract_submodel
    assert count_parameters(model) > count_parameters(sub)
    assert [s.n_channels for s in layer_specs(model)] == [128, 128, 128]


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_submodel_sharing_weights_equals_the_deep_copy_and_shares_only_what_it_keeps(arch: str) -> None:
    model = MODELS[arch]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = plan_for_ratio(compute_importance(model, "magnitude"), 0.5, layer_ratios={0: 0.0})
    copied, shared = extract_submodel(model, plan), submodel_sharing_weights(model, plan)
    assert copied.state_dict().keys() == shared.state_dict().keys()
    for name, tensor in copied.state_dict().items():
        assert torch.equal(tensor, shared.state_dict()[name]), name
    x = inputs()
    with torch.no_grad():
        assert torch.equal(copied(**x).logits, shared(**x).logits)
    global_ptrs = {t.data_ptr() for t in model.state_dict().values()}
    pruned = {n for n, t in shared.state_dict().items() if t.shape != model.state_dict()[n].shape}
    assert pruned  # layers 1+ lost units ...
    for name, tensor in shared.state_dict().items():  # ... and got their own tensors; the rest is shared
        assert (tensor.data_ptr() in global_ptrs) == (name not in pruned), name
    assert [s.n_channels for s in layer_specs(model)] == [128, 128, 128]  # the global model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.config is not shared.config and not hasattr(model.config, "fedspine_layer_shapes")


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_param_count_matches_plan_and_save_load(arch: str, tmp_path) -> None:
    model = MODELS[arch]()
    plan = plan_for_ratio(compute_importance(model), 0.5, protected_layers=[-1], layer_ratios={1: 0.25})
    predicted = predicted_parameter_count(model, plan)
    apply_plan(model, plan)
    assert count_parameters(model) == predicted
    assert 0.0 < sparsity(model) < 0.5
    save_pruned(model, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["fedspine_layer_shapes"]["mlp_channels"] == [len(plan.mlp[i]) for i in range(3)]
    loaded = load_pruned(tmp_path)
    assert type(loaded) is type(model)
    assert count_parameters(loaded) == predicted
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, model(**x).logits, rtol=0, atol=0)
    assert sparsity(loaded) == pytest.approx(sparsity(model))


def test_llama_generate_and_progressive_pruning() -> None:
    model = tiny_llama()
    first = plan_for_ratio(compute_importance(model), 0.25)
    original = copy.deepcopy(model)
    apply_plan(model, first)
    second = plan_for_ratio(compute_importance(model), 0.5)  # relative to the pruned model
    apply_plan(model, second)
    composed = first.compose(second)
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(**x).logits, extract_submodel(original, composed)(**x).logits)
    out = model.generate(x["input_ids"][:1], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 16)
    attn = layer_specs(model)[0].block.self_attn
    assert attn.num_key_value_heads * attn.num_key_value_groups == attn.num_heads


def test_plan_roundtrip_and_validation() -> None:
    model = tiny_bert()
    plan = plan_for_ratio(compute_importance(model), 0.5)
    d = json.loads(json.dumps(plan.to_dict()))
    assert PruningPlan.from_dict(d) == plan
    assert identity_plan(model).is_identity()
    bad = PruningPlan.from_dict(d)
    bad.attention[0] = []
    with pytest.raises(ValueError):
        apply_plan(copy.deepcopy(model), bad)
    bad.attention[0] = [99]
    with pytest.raises(ValueError):
        apply_plan(copy.deepcopy(model), bad)
