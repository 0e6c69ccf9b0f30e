"""The pruning engine on the decoder families transformers loads: Qwen2/3, Mistral, Gemma-2/3, Phi-3, ...

Tiny random models built from the real config classes cover grouped KV heads (GQA), one KV head (MQA),
per-head q/k norms, explicit ``head_dim`` != hidden / heads (Gemma, Qwen3), tied and untied embeddings,
fused projections (Phi-3 ``qkv_proj`` / ``gate_up_proj``), sliding-window layers and a plain MLP
(StarCoder2 ``c_fc`` / ``c_proj``). Each is checked for exactness of the surgery (pruned == masked dense
model), nested plans, LoRA coordinate mapping, importance, sub-model growth, PEFT wrapping and save/load.
"""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
    Qwen3Config,
    Qwen3ForCausalLM,
    Starcoder2Config,
    Starcoder2ForCausalLM,
)

from fedspine_ray.pruning import (
    PruningPlan,
    apply_plan,
    attention_prunable,
    check_prunable_config,
    compute_importance,
    config_lora_targets,
    config_shapes,
    extend_and_select,
    extract_submodel,
    get_adapter,
    layer_specs,
    linear_index_map,
    load_pruned,
    lora_target_names,
    lora_to_global,
    lora_to_sub,
    merge_lora_delta,
    plan_for_original_ratio,
    plan_for_ratio,
    prunable_linear_shapes,
    prunable_units,
    ratio_for_sparsity,
    relative_plan,
    save_pruned,
    sparsity,
    unit_slices,
)
from fedspine_ray.pruning.architectures import ROWS, get_linear, unit_view

from .test_pruning_apply import zeroed_copy

VOCAB = 128
COMMON = {
    "vocab_size": VOCAB,
    "num_hidden_layers": 3,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def _qwen2():
    cfg = Qwen2Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
        tie_word_embeddings=True, use_sliding_window=True, sliding_window=4, max_window_layers=1, **COMMON,
    )  # fmt: skip
    return Qwen2ForCausalLM(cfg)


def _qwen3():  # q_norm/k_norm per head_dim; head_dim 24 * 4 heads = 96 != hidden 64
    cfg = Qwen3Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=24, intermediate_size=96,
        tie_word_embeddings=False, **COMMON,
    )  # fmt: skip
    return Qwen3ForCausalLM(cfg)


def _mistral():
    cfg = MistralConfig(
        hidden_size=64, num_attention_heads=8, num_key_value_heads=4, intermediate_size=96, sliding_window=5,
        **COMMON,
    )  # fmt: skip
    return MistralForCausalLM(cfg)


def _gemma2():  # explicit head_dim (4 * 16 = 64 != hidden 48), softcapping, alternating sliding layers, tied
    cfg = Gemma2Config(
        hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=96,
        query_pre_attn_scalar=16, sliding_window=4, attn_implementation="eager", **COMMON,
    )  # fmt: skip
    return Gemma2ForCausalLM(cfg)


def _gemma3():  # q_norm/k_norm of size head_dim, explicit head_dim, sliding + full layers, tied
    cfg = Gemma3TextConfig(
        hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=96,
        query_pre_attn_scalar=16, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], **COMMON,
    )  # fmt: skip
    return Gemma3ForCausalLM(cfg)


def _phi3():  # fused qkv_proj and gate_up_proj, untied
    cfg = Phi3Config(
        hidden_size=64, num_attention_heads=8, num_key_value_heads=2, intermediate_size=96, **COMMON
    )
    return Phi3ForCausalLM(cfg)


def _phi3_mqa():  # fused, one KV head
    cfg = Phi3Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=1, intermediate_size=96, **COMMON
    )
    return Phi3ForCausalLM(cfg)


def _mqa():  # one KV head: attention units cannot be removed, channels only
    cfg = LlamaConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=1, intermediate_size=96, **COMMON
    )
    return LlamaForCausalLM(cfg)


def _starcoder2():  # plain MLP (c_fc / c_proj) with biases
    cfg = Starcoder2Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96, sliding_window=6,
        **COMMON,
    )  # fmt: skip
    return Starcoder2ForCausalLM(cfg)


FAMILIES = {
    "qwen2": (_qwen2, {"attention": ["q_proj", "k_proj", "v_proj", "o_proj"], "mlp": ["gate_proj", "up_proj", "down_proj"]}),
    "qwen3": (_qwen3, None),
    "mistral": (_mistral, None),
    "gemma2": (_gemma2, None),
    "gemma3_text": (_gemma3, None),
    "phi3": (_phi3, {"attention": ["qkv_proj", "o_proj"], "mlp": ["gate_up_proj", "down_proj"]}),
    "phi3_mqa": (_phi3_mqa, None),
    "mqa": (_mqa, None),
    "starcoder2": (_starcoder2, {"attention": ["q_proj", "k_proj", "v_proj", "o_proj"], "mlp": ["c_fc", "c_proj"]}),
}  # fmt: skip
MQA = {"mqa", "phi3_mqa"}


def build(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = FAMILIES[family][0]()
    with torch.no_grad():  # norms start at 1 / 0: randomise them so q_norm/k_norm really take part
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def inputs(batch: int = 2, seq: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding, as for generation
    return {"input_ids": ids, "attention_mask": mask}


def a_plan(model: torch.nn.Module) -> PruningPlan:
    return plan_for_ratio(compute_importance(model, "magnitude"), 0.5, layer_ratios={0: 0.0, 2: 0.75})


def lora_factors(peft_model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A, B * scaling) per LoRA-wrapped Linear, under plain HF names."""
    out = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            plain = name.removeprefix("base_model.model.")
            a = module.lora_A["default"].weight.detach().clone()
            b = module.lora_B["default"].weight.detach().clone() * module.scaling["default"]
            out[plain] = (a, b)
    return out


def targets(model: torch.nn.Module) -> list[str]:
    names = lora_target_names(model)
    return names["attention"] + names["mlp"]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request) -> str:
    return request.param


def test_structure_and_config_agree(family: str) -> None:
    model = build(family)
    assert get_adapter(model).name == "decoder"
    specs = layer_specs(model)
    shapes = config_shapes(model.config)
    assert len(specs) == shapes.num_layers == 3
    for spec in specs:
        assert spec.n_units == shapes.attention_units == shapes.num_key_value_heads
        assert spec.heads_per_unit == shapes.heads_per_unit
        assert spec.head_dim == shapes.head_dim
        assert spec.n_channels == shapes.intermediate_size
    assert attention_prunable(model) is shapes.attention_prunable is (family not in MQA)
    check_prunable_config(model.config)
    as_json = json.loads(model.config.to_json_string())  # what preflight reads from config.json
    check_prunable_config(as_json)
    assert config_shapes(as_json) == shapes
    expected = FAMILIES[family][1]
    if expected is not None:
        assert lora_target_names(model) == expected
    assert lora_target_names(model) == config_lora_targets(model.config.to_dict())
    # unit_view gathers exactly the indices SliceSpec.indices names (fused parts included)
    spec = specs[1]
    for slices, n in ((spec.attention, spec.n_units), (spec.mlp, spec.n_channels)):
        for s in slices:
            w = get_linear(spec, s).weight
            view = unit_view(w, s, n)
            for u in range(n):
                want = w.index_select(s.axis, s.indices([u], n))
                torch.testing.assert_close(view[u], (want if s.axis == ROWS else want.t()).reshape(-1))


def test_pruned_equals_masked_dense_and_generates(family: str) -> None:
    model = build(family)
    plan = a_plan(model)
    if family in MQA:
        assert all(len(v) == 1 for v in plan.attention.values())
    else:
        assert plan.kept_units()[2] < plan.base_units[2]
    assert len({len(v) for v in plan.mlp.values()}) == 3
    sub = extract_submodel(model, plan)
    ref = zeroed_copy(model, plan)
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(sub(**x).logits, ref(**x).logits, rtol=1e-5, atol=1e-5)
    assert [s.n_channels for s in layer_specs(model)] == [96] * 3  # the global model is untouched
    assert sparsity(sub) > 0.2
    out_sub = sub.generate(**x, max_new_tokens=4, do_sample=False)
    out_ref = ref.generate(**x, max_new_tokens=4, do_sample=False)
    assert torch.equal(out_sub, out_ref)
    for spec in layer_specs(sub):  # the attention module describes its pruned heads
        attn = spec.block.get_submodule(spec.attention[0].name.rpartition(".")[0])
        assert attn.num_key_value_heads == spec.n_units == len(plan.attention[spec.index])
        assert attn.num_key_value_heads * attn.num_key_value_groups == attn.num_heads
        assert attn.head_dim == spec.head_dim
        for norm in ("q_norm", "k_norm"):  # per-head norms are shared by all heads: untouched
            if hasattr(attn, norm):
                assert getattr(attn, norm).weight.shape == (spec.head_dim,)


def test_progressive_pruning_save_load_and_pickle(family: str, tmp_path) -> None:
    model = build(family)
    original = copy.deepcopy(model)
    first = plan_for_ratio(compute_importance(model), 0.25)
    apply_plan(model, first)
    second = plan_for_ratio(compute_importance(model), 0.5, layer_ratios={1: 0.25})
    apply_plan(model, second)
    x = inputs()
    with torch.no_grad():
        want = model(**x).logits
        torch.testing.assert_close(extract_submodel(original, first.compose(second))(**x).logits, want)
    save_pruned(model, tmp_path)
    loaded = load_pruned(tmp_path)
    assert type(loaded) is type(model)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    assert (loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight) is tied
    revived = pickle.loads(pickle.dumps(model))  # Ray ships models pickled
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, want, rtol=0, atol=0)
        torch.testing.assert_close(revived(**x).logits, want, rtol=0, atol=0)
    assert sparsity(loaded) == pytest.approx(sparsity(model))


def test_plans_nested_and_importance_finite(family: str) -> None:
    model = build(family)
    batch = inputs()
    batch["labels"] = batch["input_ids"].clone()
    for method in ("magnitude", "taylor"):
        imp = compute_importance(model, method, [batch])
        specs = layer_specs(model)
        for spec in specs:
            assert imp.attention[spec.index].shape == (spec.n_units,)
            assert imp.mlp[spec.index].shape == (spec.n_channels,)
            assert (
                torch.isfinite(imp.attention[spec.index]).all() and torch.isfinite(imp.mlp[spec.index]).all()
            )
            assert float(imp.mlp[spec.index].sum()) > 0
        plans = [plan_for_ratio(imp, r) for r in (0.0, 0.25, 0.5, 0.75, 0.9)]
        assert plans[0].is_identity()
        for lo, hi in zip(plans, plans[1:], strict=False):
            for i in lo.layers:
                assert set(hi.attention[i]) <= set(lo.attention[i]) and set(hi.mlp[i]) <= set(lo.mlp[i])
    assert all(p.grad is None for p in model.parameters())


def test_lora_sub_to_global_roundtrip_and_merge(family: str) -> None:
    global_model = build(family)
    plan = plan_for_ratio(compute_importance(global_model), 0.5, layer_ratios={1: 0.25})
    sub = extract_submodel(global_model, plan)
    peft_sub = get_peft_model(
        sub, LoraConfig(r=4, lora_alpha=8, target_modules=targets(sub), lora_dropout=0.0)
    )
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in peft_sub.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    peft_sub.eval()
    n_wrapped = sum(1 for _, m in peft_sub.named_modules() if hasattr(m, "lora_A"))
    assert n_wrapped == 3 * len(targets(global_model))
    x = inputs()
    with torch.no_grad():
        want = peft_sub(**x).logits
    factors = lora_factors(peft_sub)
    index_map = linear_index_map(global_model, plan)
    full = lora_to_global(factors, index_map, prunable_linear_shapes(global_model))
    back = lora_to_sub(full, index_map)
    for name, (a, b) in factors.items():
        assert torch.equal(back[name][0], a) and torch.equal(back[name][1], b)
    merged = copy.deepcopy(global_model)
    merge_lora_delta(merged, full)
    with torch.no_grad():
        torch.testing.assert_close(extract_submodel(merged, plan)(**x).logits, want, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(extract_submodel(global_model, plan)(**x).logits, want, atol=1e-4)
    # a plan in original coordinates mapped on an already pruned model (validate=False) places the fused
    # parts by the plan's base sizes, exactly as on the original model
    pruned = extract_submodel(global_model, plan_for_ratio(compute_importance(global_model), 0.25))
    via_pruned = linear_index_map(pruned, plan, validate=False)
    for name, (rows, cols) in index_map.items():
        got_rows, got_cols = via_pruned[name]
        assert (rows is None) == (got_rows is None) and (cols is None) == (got_cols is None)
        assert torch.equal(rows if rows is not None else cols, got_rows if rows is not None else got_cols)


def test_growing_a_held_submodel_equals_direct_extraction(family: str) -> None:
    global_model = build(family)
    imp = compute_importance(global_model)
    held_plan, target_plan, smaller = (plan_for_ratio(imp, r) for r in (0.5, 0.25, 0.75))
    # shrink locally: relative plan
    held = extract_submodel(global_model, held_plan)
    rel = relative_plan(held_plan, smaller)
    assert rel is not None
    shrunk = apply_plan(copy.deepcopy(held), rel)
    # grow: keep what is held, append the lacking units' weights (as strategies/lora_base derives it)
    plan = PruningPlan()
    missing: dict[int, dict[str, list[int]]] = {}
    for layer in target_plan.layers:
        for kind in ("attention", "mlp"):
            held_units = getattr(held_plan, kind)[layer]
            lacking = [u for u in getattr(target_plan, kind)[layer] if u not in set(held_units)]
            order = {u: j for j, u in enumerate(held_units + lacking)}
            getattr(plan, kind)[layer] = [order[u] for u in getattr(target_plan, kind)[layer]]
            missing.setdefault(layer, {})[kind] = lacking
    grown = extend_and_select(held, plan, unit_slices(global_model, missing))
    x = inputs()
    for got, want_plan in ((grown, target_plan), (shrunk, smaller)):
        direct = extract_submodel(global_model, want_plan)
        got_state, want_state = got.state_dict(), direct.state_dict()
        assert got_state.keys() == want_state.keys()
        for name, tensor in want_state.items():
            assert torch.equal(got_state[name], tensor), name
        with torch.no_grad():
            torch.testing.assert_close(got(**x).logits, direct(**x).logits, rtol=0, atol=0)


def test_pruned_model_wraps_with_peft_and_trains(family: str) -> None:
    model = build(family)
    sub = extract_submodel(model, a_plan(model))
    peft_model = get_peft_model(sub, LoraConfig(r=2, lora_alpha=4, target_modules=targets(model)))
    batch = inputs()
    loss = peft_model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert layer_specs(peft_model)[0].n_channels == layer_specs(sub)[0].n_channels  # looks through PEFT


def test_single_kv_head_prunes_channels_only() -> None:
    model = build("mqa")
    assert not attention_prunable(model)
    assert ratio_for_sparsity(model, 0.3, prune_attention=True) == pytest.approx(
        ratio_for_sparsity(model, 0.3, prune_attention=False)
    )
    pu = prunable_units(model)
    r = ratio_for_sparsity(model, 0.3)
    plan = plan_for_original_ratio(
        compute_importance(model), r, dict(enumerate(pu.original_attention_units)),
        dict(enumerate(pu.original_mlp_channels)), prune_attention=True,
    )  # fmt: skip
    apply_plan(model, plan)
    assert prunable_units(model).attention_units == [1, 1, 1]
    assert sparsity(model) == pytest.approx(0.3, abs=0.03)
    assert not attention_prunable(model)  # judged on the original sizes, recorded at the first pruning
    gqa = build("qwen2")
    assert attention_prunable(gqa)
    apply_plan(gqa, plan_for_ratio(compute_importance(gqa), 0.9))  # down to one KV group per layer
    assert prunable_units(gqa).attention_units == [1, 1, 1] and attention_prunable(gqa)


def test_sequence_classification_head_on_a_pruned_decoder() -> None:
    torch.manual_seed(0)
    cfg = Qwen2Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96, num_labels=3,
        **COMMON,
    )  # fmt: skip
    model = Qwen2ForSequenceClassification(cfg).eval()
    plan = a_plan(model)
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            extract_submodel(model, plan)(**x).logits,
            zeroed_copy(model, plan)(**x).logits,
            rtol=1e-5,
            atol=1e-5,
        )


def _one_line_error(exc: pytest.ExceptionInfo, model_type: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert f"'{model_type}'" in message and "supported:" in message and "llama" in message
    assert "pruning.target_sparsity: 0" in message


def test_unsupported_architectures_raise_one_line_errors() -> None:
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=32))
    with pytest.raises(ValueError) as exc:
        layer_specs(gpt2)
    _one_line_error(exc, "gpt2")
    with pytest.raises(ValueError) as exc:
        check_prunable_config(gpt2.config)
    _one_line_error(exc, "gpt2")
    with pytest.raises(ValueError) as exc:
        check_prunable_config({"model_type": "gpt2", "n_embd": 32})
    _one_line_error(exc, "gpt2")
    # OLMo-2 matches q/k/v/o + gate/up/down by name, but its q_norm/k_norm span all heads
    olmo = Olmo2ForCausalLM(
        Olmo2Config(
            hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=VOCAB, num_hidden_layers=2
        )
    )
    with pytest.raises(ValueError) as exc:
        get_adapter(olmo)
    _one_line_error(exc, "olmo2")
    assert "q_norm" in str(exc.value)
    with pytest.raises(ValueError) as exc:
        check_prunable_config(olmo.config.to_dict())
    _one_line_error(exc, "olmo2")
    # a multimodal config is judged by its text backbone
    check_prunable_config({"model_type": "gemma3", "text_config": {"model_type": "gemma3_text"}})
    check_prunable_config({"model_type": "bert"})
