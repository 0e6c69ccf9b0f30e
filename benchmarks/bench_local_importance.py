"""How well do device-side unit scores rank units, against the server's Taylor importance on many batches?

Device-side pruning (``pruning.where: client``) scores units from what a LoRA step already computes. This
script measures, on the shipped MiniLM + tweet task, the Spearman rank correlation (mean over layers) of
each estimate with the server's Taylor scores over ``--reference-batches`` batches:

* ``taylor_2``: the server's Taylor over 2 calibration batches (what ``pruning.where: server`` uses);
* ``activation`` / ``lora_gradient``: the device estimates (fedspine_ray/pruning/local.py) over
  ``--device-batches`` batches, with a fresh LoRA adapter as a device has in its first round.

    python benchmarks/bench_local_importance.py --json-out /tmp/local_importance.json
"""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import torch

from fedspine_ray.config import load_config
from fedspine_ray.data import load_data, tokenize
from fedspine_ray.modeling.adapters import attach_lora, init_factors, load_factors, lora_target_shapes
from fedspine_ray.modeling.loading import (
    head_module_names,
    load_classifier,
    load_tokenizer,
    lora_targets,
    resolve_model_path,
)
from fedspine_ray.pruning import UnitImportance, compute_importance
from fedspine_ray.pruning.local import LocalPruner, LocalPruningTask


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = torch.argsort(torch.argsort(a.double())).double()
    rb = torch.argsort(torch.argsort(b.double())).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def agreement(reference: UnitImportance, other: UnitImportance) -> dict[str, float]:
    return {
        kind: float(np.mean([spearman(getattr(reference, kind)[i], getattr(other, kind)[i]) for i in layers]))
        for kind, layers in (("attention", reference.attention), ("mlp", reference.mlp))
    }


def device_scores(model, targets, batches, method: str, rank: int, seed: int) -> UnitImportance:
    wrapped = attach_lora(
        copy.deepcopy(model),
        rank=rank,
        alpha=2 * rank,
        dropout=0.0,
        targets=targets,
        trainable_modules=head_module_names(model),
    )
    load_factors(wrapped, init_factors(lora_target_shapes(model, targets), rank, seed=seed))
    pruner = LocalPruner(
        wrapped, LocalPruningTask({"attention": {}, "mlp": {}}, every=10**6, importance=method), 1
    )
    wrapped.eval()
    for batch in batches:
        wrapped.zero_grad(set_to_none=True)
        wrapped(**batch).loss.backward()
        pruner.after_backward()
    pruner.remove_hooks()
    return UnitImportance(
        attention={i: s.float() for i, s in pruner.scores["attention"].items()},
        mlp={i: s.float() for i, s in pruner.scores["mlp"].items()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="experiment YAML (default: configs/fedspine.yaml)")
    parser.add_argument("--reference-batches", type=int, default=32)
    parser.add_argument("--device-batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    from fedspine_ray.config import shipped_config_path

    cfg = load_config(args.config or shipped_config_path("fedspine.yaml"))
    model_dir = resolve_model_path(cfg.model.path)
    data = load_data(cfg.data, cfg.seed)
    train = tokenize(data.train_texts, data.train_labels, load_tokenizer(model_dir), cfg.model.max_seq_len)
    model = load_classifier(model_dir, data.num_labels, cfg.seed)
    size = args.batch_size
    batches = [train.batch(np.arange(i * size, (i + 1) * size)) for i in range(len(train) // size)]
    reference = compute_importance(model, "taylor", batches[: args.reference_batches])
    rest = batches[args.reference_batches :]
    targets = lora_targets(model, cfg.lora.target_modules)
    results = {"taylor_2": agreement(reference, compute_importance(model, "taylor", rest[:2]))}
    for method in ("activation", "lora_gradient"):
        scores = device_scores(
            model, targets, rest[2 : 2 + args.device_batches], method, args.rank, args.seed
        )
        results[method] = agreement(reference, scores)
    for name, value in results.items():
        print(
            f"{name:14s} spearman vs taylor_{args.reference_batches}: attention {value['attention']:.3f}  "
            f"mlp {value['mlp']:.3f}"
        )
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump({"args": vars(args), "spearman": results}, handle, indent=2)


if __name__ == "__main__":
    main()
