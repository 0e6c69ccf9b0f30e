"""Any decoder a user brings: non-LLaMA layouts through prune -> derive -> train -> aggregate on real Ray, an
unprunable decoder (GPT-2) under an unpruned method, and the pre-flight error a pruning method gets for it.

Tiny random models of the real transformers classes (``create_tiny_decoder``): Qwen3 (per-head q/k norms,
head_dim != hidden / heads), Phi-3 (fused ``qkv_proj`` / ``gate_up_proj``), Gemma-2 (explicit head_dim, tied
embeddings, sliding-window layers, soft-capping) and GPT-2 (Conv1D projections, fused ``c_attn``).
"""

from __future__ import annotations

import pytest
import torch

from fedspine_ray.config import ConfigError
from fedspine_ray.devices.workload import model_shape_summary
from fedspine_ray.launch.preflight import check_inputs
from fedspine_ray.launch.results import read_run
from fedspine_ray.modeling.loading import create_tiny_decoder, load_causal_lm, lora_targets
from fedspine_ray.modeling.model_info import gguf_metadata, gguf_model_type, model_config_dict
from fedspine_ray.pruning import config_shapes, layer_specs
from fedspine_ray.runner import run_experiment

from .test_e2e_ray import tiny_config

PRUNABLE = ("qwen3", "phi3", "gemma2")


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    return {f: create_tiny_decoder(tmp_path_factory.mktemp(f"tiny-{f}"), f) for f in (*PRUNABLE, "gpt2")}


def _lm_config(model_dir, data_csv, out_dir, method, **sections):
    return tiny_config(
        model_dir,
        data_csv,
        out_dir,
        model={"max_seq_len": 32},
        data={"max_train_samples": 160, "max_test_samples": 24},
        task={"kind": "causal_lm", "label_words": {"negative": "bad", "positive": "good"}},
        clients={"num_clients": 2},
        training={"rounds": 2, "local_steps": 4, "batch_size": 8, "lr": 0.01},
        method={"name": method},
        **sections,
    )


@pytest.mark.parametrize("family", PRUNABLE)
def test_fedspine_prunes_derives_trains_and_aggregates_non_llama_decoders(
    ray_session, family_dirs, tiny_text_csv, tmp_path, family
):
    config = _lm_config(
        family_dirs[family],
        tiny_text_csv,
        tmp_path / family,
        "fedspine",
        pruning={
            "target_sparsity": 0.3,
            "importance": "taylor",
            "schedule": "linear",
            "end_fraction": 1.0,
            "prune_attention": True,
        },
        bandit={"pruning_ratios": [0.0, 0.5], "ranks": [4]},
    )
    check_inputs(config)  # pre-flight accepts the family
    run_experiment(config, progress=False)
    rounds, clients = read_run(tmp_path / family)
    assert rounds["round"].tolist() == [0, 1, 2]
    assert (clients["status"] == "ok").all()  # every update passed validation and was aggregated
    assert rounds["num_aggregated"].iloc[1:].tolist() == [2, 2]
    # the global model was pruned after round 1, so round 2's devices derived their new sub-models
    assert rounds["sparsity"].iloc[1] > 0 and rounds["sparsity"].iloc[-1] >= rounds["sparsity"].iloc[1]
    assert rounds["total_params"].iloc[-1] < rounds["total_params"].iloc[0]
    assert set(clients[clients["round"] == 2]["base_transfer"]) == {"derived"}
    assert torch.isfinite(torch.tensor(rounds["test_loss"].to_numpy())).all()
    assert clients["loss_last"].mean() < clients["loss_first"].mean()
    assert (rounds["eval_samples"] == 24).all()


def test_unprunable_gpt2_trains_under_fedit_and_fails_preflight_under_fedspine(
    ray_session, family_dirs, tiny_text_csv, tmp_path
):
    model = load_causal_lm(family_dirs["gpt2"])
    # Conv1D projections become equivalent Linears; `auto` falls back to PEFT's default targets (c_attn)
    assert isinstance(model.transformer.h[0].attn.c_attn, torch.nn.Linear)
    assert lora_targets(model, "auto") == ["c_attn"]
    config = _lm_config(family_dirs["gpt2"], tiny_text_csv, tmp_path / "gpt2", "fedit")
    check_inputs(config)
    run_experiment(config, progress=False)
    rounds, clients = read_run(tmp_path / "gpt2")
    assert (clients["status"] == "ok").all() and rounds["num_aggregated"].iloc[-1] == 2
    assert clients["loss_last"].mean() < clients["loss_first"].mean()
    assert rounds["sparsity"].eq(0).all() and rounds["total_params"].nunique() == 1
    pruning = _lm_config(family_dirs["gpt2"], tiny_text_csv, tmp_path / "no", "fedspine")
    with pytest.raises(ConfigError) as error:
        run_experiment(pruning, progress=False)  # before Ray is touched: the pre-flight check
    message = str(error.value)
    assert message.startswith("model.path: method 'fedspine' prunes the model, but architecture 'gpt2'")
    assert "fedit, hetlora, flexlora" in message and "\n" not in message
    assert not (tmp_path / "no" / "rounds.parquet").exists()


@pytest.mark.parametrize("family", [*PRUNABLE, "gpt2"])
def test_cost_model_reads_each_layout(family_dirs, family):
    """FLOPs and memory read the real attention width (Gemma / Qwen3: heads x head_dim != hidden) and count
    fused Linears whole (Phi-3); an unprunable model is read from its config."""
    model = load_causal_lm(family_dirs[family])
    shapes = config_shapes(model.config)
    summary = model_shape_summary(model)
    assert summary["attention_width"] == shapes.num_attention_heads * shapes.head_dim
    assert summary["num_layers"] == shapes.num_layers and summary["hidden_size"] == shapes.hidden_size
    linears = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert summary["non_embedding_params"] == linears
    if family != "gpt2":
        assert summary["intermediate_size"] == shapes.intermediate_size == layer_specs(model)[0].n_channels
    else:
        assert summary["intermediate_size"] == model.transformer.h[0].mlp.c_fc.out_features
    if family in ("qwen3", "gemma2"):
        assert summary["attention_width"] != shapes.hidden_size


def test_model_info_reads_families_without_torch(family_dirs, tmp_path):
    assert model_config_dict(family_dirs["phi3"])["model_type"] == "phi3"
    assert model_config_dict(tmp_path) == {}  # no config.json
    # a minimal GGUF header (v3): general.architecture + general.name, then a large array that is never read
    import struct

    def string(text):
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    def kv(key, kind, payload):
        return string(key) + struct.pack("<I", kind) + payload

    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 3)
    header += kv("general.architecture", 8, string("gemma3"))
    header += kv("general.name", 8, string("Gemma 3 1B"))
    header += kv("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 3) + struct.pack("<3f", 0.0, 1.0, 2.0))
    path = tmp_path / "tiny.gguf"
    path.write_bytes(header)
    assert gguf_metadata(path) == {"general.architecture": "gemma3", "general.name": "Gemma 3 1B"}
    assert gguf_model_type(path) == "gemma3_text"  # transformers' mapping for the text model
    assert model_config_dict(path) == {"model_type": "gemma3_text"}
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a GGUF"):
        gguf_metadata(bad)


@pytest.mark.parametrize("family", (*PRUNABLE, "gpt2"))
def test_scoring_from_a_shared_prompt_prefix_equals_scoring_each_prompt_alone(family_dirs, family):
    """Evaluation runs the template's shared first tokens once and continues every length group from a copy
    of their cache (``next_token_logprobs``); each example must get what it gets alone, for every layout,
    including Gemma-2's sliding-window layers (window 16, prompts up to 30 tokens)."""
    from fedspine_ray.data.tokens import TokenizedSplit
    from fedspine_ray.modeling.tasks import _prefix_cache, _shared_prefix, answer_loss, next_token_logprobs

    model = load_causal_lm(family_dirs[family]).eval()
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(5, 200, (12,), generator=g)
    lengths = torch.tensor([14, 20, 20, 30, 17, 20, 13])
    ids = torch.zeros(len(lengths), 32, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        ids[row, :12] = prefix
        ids[row, 12:length] = torch.randint(5, 200, (length - 12,), generator=g)
    ids[:, 12] = torch.arange(len(lengths)) + 300  # every prompt leaves the template at token 12
    assert _shared_prefix(ids, lengths) == 12
    assert _prefix_cache(model, ids[:1, :12]) is not None  # the shared path runs, not the fallback

    shared = next_token_logprobs(model, ids, lengths, batch_size=2)
    whole = next_token_logprobs(model, ids, lengths, batch_size=2, share_prefix=False)
    with torch.no_grad():
        alone = torch.stack(
            [
                torch.log_softmax(model(input_ids=ids[r : r + 1, :n]).logits[0, -1].float(), -1)
                for r, n in enumerate(lengths.tolist())
            ]
        )
    torch.testing.assert_close(whole, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared, alone, atol=1e-5, rtol=1e-5)

    # the answer loss (instruction tuning's metric): the last 1-3 tokens of each prompt are its answer
    mask = (torch.arange(32)[None, :] < lengths[:, None]).long()
    labels = torch.full_like(ids, -100)
    for row, length in enumerate(lengths.tolist()):
        labels[row, length - 1 - row % 3 : length] = ids[row, length - 1 - row % 3 : length]
    split = TokenizedSplit(ids, mask, labels)
    loss, accuracy = answer_loss(model, split, batch_size=2)
    assert (loss, accuracy) == pytest.approx(answer_loss(model, split, 2, share_prefix=False), abs=1e-5)


def test_shared_prefix_leaves_every_prompt_a_token_of_its_own():
    from fedspine_ray.modeling.tasks import _shared_prefix

    ids = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, 9, 9]])
    assert _shared_prefix(ids, torch.tensor([5, 5, 5])) == 3
    assert _shared_prefix(ids[:2], torch.tensor([4, 5])) == 3  # identical rows: all but the shortest's last
    assert _shared_prefix(ids[:1], torch.tensor([5])) == 0
