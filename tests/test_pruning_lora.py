"""LoRA trained on a sub-model, scattered to global coordinates and merged, reproduces the sub-model."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from fedspine_ray.modeling.adapters import extract_factors, load_factors
from fedspine_ray.pruning import (
    compute_importance,
    extract_submodel,
    linear_index_map,
    lora_to_global,
    lora_to_sub,
    merge_lora_delta,
    plan_for_ratio,
    prunable_linear_shapes,
)

from .test_pruning_apply import tiny_bert


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        intermediate_size=128,
        vocab_size=1000,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


CASES = {
    "llama": (tiny_llama, ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]),
    # "dense" hits attention.output/intermediate/output
    "bert": (functools.partial(tiny_bert, layers=2), ["query", "value", "dense"]),
}


def randomize_lora(peft_model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("arch", sorted(CASES))
def test_lora_sub_to_global_merge_roundtrip(arch: str) -> None:
    build, targets = CASES[arch]
    global_model = build()
    plan = plan_for_ratio(compute_importance(global_model), 0.5, layer_ratios={1: 0.25})
    sub = extract_submodel(global_model, plan)
    peft_sub = get_peft_model(sub, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    randomize_lora(peft_sub)
    peft_sub.eval()
    x = {"input_ids": torch.randint(1, 1000, (2, 10), generator=torch.Generator().manual_seed(5))}
    with torch.no_grad():
        want = peft_sub(**x).logits

    factors = extract_factors(peft_sub)
    assert factors, "no LoRA factors found"
    assert all(not n.startswith("base_model") for n in factors)
    index_map = linear_index_map(global_model, plan)
    full = lora_to_global(factors, index_map, prunable_linear_shapes(global_model))
    for name, (a, b) in full.items():
        out_f, in_f = prunable_linear_shapes(global_model).get(name, (b.shape[0], a.shape[1]))
        assert a.shape[1] == in_f and b.shape[0] == out_f
    # inverse mapping recovers the sub-model factors exactly
    back = lora_to_sub(full, index_map)
    for name, (a, b) in factors.items():
        torch.testing.assert_close(back[name][0], a, rtol=0, atol=0)
        torch.testing.assert_close(back[name][1], b, rtol=0, atol=0)

    merged = copy.deepcopy(global_model)
    merge_lora_delta(merged, full)
    with torch.no_grad():
        got = extract_submodel(merged, plan)(**x).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # merging really changed the global weights, and a zero-LoRA sub-model differs from want
    with torch.no_grad():
        assert not torch.allclose(extract_submodel(global_model, plan)(**x).logits, want, atol=1e-4)


def test_load_lora_factors_inverts_extract() -> None:
    model = tiny_llama()
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=16, target_modules=["q_proj"]))
    randomize_lora(peft_model)
    f = extract_factors(peft_model)
    zeros = {k: (torch.zeros_like(a), torch.zeros_like(b)) for k, (a, b) in f.items()}
    load_factors(peft_model, zeros)
    assert all(float(b.abs().sum()) == 0 for _, b in extract_factors(peft_model).values())
    load_factors(peft_model, f)
    for k, (a, b) in extract_factors(peft_model).items():
        torch.testing.assert_close(a, f[k][0])
        torch.testing.assert_close(b, f[k][1])


def test_importance_on_peft_model_matches_plain() -> None:
    model = tiny_llama()
    plain = compute_importance(model, "magnitude")
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj", "down_proj"]))
    wrapped = compute_importance(peft_model, "magnitude")
    for i in plain.attention:
        torch.testing.assert_close(plain.attention[i], wrapped.attention[i])
        torch.testing.assert_close(plain.mlp[i], wrapped.mlp[i])


def test_taylor_and_merge_on_peft_model() -> None:
    model = tiny_llama()
    batch = {"input_ids": torch.randint(1, 1000, (2, 8), generator=torch.Generator().manual_seed(2))}
    batch["labels"] = batch["input_ids"].clone()
    plain = compute_importance(model, "taylor", [batch])
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj"]))
    wrapped = compute_importance(peft_model, "taylor", [batch])  # LoRA B == 0: same function, same grads
    torch.testing.assert_close(plain.attention[1], wrapped.attention[1])
    assert all(not p.requires_grad for n, p in peft_model.named_parameters() if "lora_" not in n)
    f = {"model.layers.0.self_attn.q_proj": (torch.ones(1, 64), torch.ones(64, 1))}
    merge_lora_delta(peft_model, f)
    w = peft_model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    torch.testing.assert_close(w, model.model.layers[0].self_attn.q_proj.weight + 1)
