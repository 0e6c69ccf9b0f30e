"""What one server evaluation of an LLM config costs, how near it runs to the CPU's matrix-multiply peak, and
the floor that cost puts under the ratio of a round that evaluates.

The round-time goal of the LLM issue compares a round's wall time with its clients' training steps divided by
the cores. On a box where the server shares those cores, every CPU-second the evaluation needs lands in some
round's window, so an evaluated window cannot read below ``1 + eval_cpu_s / clients' step CPU-s per round``
even if Ray, PEFT, aggregation and derivations cost nothing. This benchmark measures both terms:

* the evaluation the server runs between full evaluations (``training.eval_subset`` of the test split,
  ``Task.evaluate_metrics``: label-word log-likelihoods, grouped by length, the shared prompt prefix run once),
  on one intra-op thread, on the dense global model and on one pruned to ``pruning.target_sparsity`` (the
  global model a FedSpine run ends with; magnitude importance, since only its shape matters here);
* the forward FLOPs those passes hold (``2 x`` the Linear weights a token meets, the LM head only at the one
  position scoring reads, and the causal attention products), hence the GFLOP/s achieved, against single-thread
  ``torch.mm`` at the model's own Linear shapes and at a large square (the core's practical peak);
* with ``--rounds-json`` (a JSON ``bench_llm_round.py`` wrote), the clients' step CPU-s per trained round of
  that run and the resulting floor.

``--eval-dtype bfloat16`` measures the evaluation as ``server.eval_dtype: bfloat16`` runs it (the models cast,
``torch.mm`` timed in bfloat16 too).

Usage: python benchmarks/bench_eval_floor.py [--config fedspine_ray/configs/fedspine-smollm2.yaml]
       [--repeats 3] [--eval-dtype float32|bfloat16] [--rounds-json benchmarks/results/llm_round/FILE.json]
       [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from fedspine_ray.config import load_config, shipped_config_path  # noqa: E402
from fedspine_ray.modeling.loading import load_tokenizer, resolve_model_path  # noqa: E402
from fedspine_ray.modeling.tasks import GroupForward, _prompt_lengths, build_task, eval_subset  # noqa: E402
from fedspine_ray.pruning import (  # noqa: E402
    compute_importance,
    layer_specs,
    plan_for_ratio,
    prunable_units,
    submodel_sharing_weights,
)
from fedspine_ray.pruning.stats import ratio_for_sparsity  # noqa: E402

GOAL = 1.15


def _lm_head_params(model: nn.Module) -> int:
    head = model.get_output_embeddings()
    return int(head.weight.numel()) if head is not None else 0


def evaluation_linear_flops(model: nn.Module, prompt_lengths: torch.Tensor, shared: int) -> float:
    """Matrix-multiply FLOPs of one label-word evaluation (what ``torch.mm`` computes, exactly): the shared
    prefix once and every example's tokens after it through every Linear but the LM head; the LM head at the
    one position each example's scoring reads and at the prefix's positions (its cache is built by a plain
    forward, whose logits are discarded)."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    head = _lm_head_params(model)
    tokens = float(shared) + float((prompt_lengths - shared).sum())
    return 2.0 * (linear - head) * tokens + 2.0 * head * (len(prompt_lengths) + shared)


def evaluation_attention_flops(model: nn.Module, prompt_lengths: torch.Tensor, shared: int) -> float:
    """``QK^T`` and ``softmax @ V`` FLOPs of the same passes, causal: position ``p`` attends to ``p + 1`` keys."""
    widths = [s.n_units * s.heads_per_unit * s.head_dim for s in layer_specs(model)]

    def positions(first: int, last: int) -> float:  # sum of (p + 1) over positions first..last-1
        return (last * (last + 1) - first * (first + 1)) / 2.0

    keys = positions(0, shared) + sum(positions(shared, int(n)) for n in prompt_lengths)
    return 4.0 * sum(widths) * keys


def gemm_gflops(m: int, k: int, n: int, seconds: float = 0.5, dtype: torch.dtype = torch.float32) -> float:
    """Single-thread ``torch.mm`` throughput at ``[m, k] @ [k, n]`` in ``dtype`` (best of a few timed batches)."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = max(3, int(seconds * 50e9 / (2 * m * k * n)))
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, (time.perf_counter() - start) / reps)
    return 2.0 * m * k * n / best / 1e9


def time_evaluation(task: Any, model: nn.Module, split: Any, batch_size: int, repeats: int) -> dict[str, Any]:
    cpu, wall, metrics = [], [], {}
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        metrics = task.evaluate_metrics(model, split, batch_size)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return {
        "cpu_s": min(cpu),
        "cpu_s_all": cpu,
        "wall_s": min(wall),
        "test_accuracy": metrics["test_accuracy"],
    }


def pruned_copy(model: nn.Module, sparsity: float, protected: list[int], prune_attention: bool) -> nn.Module:
    ratio = ratio_for_sparsity(model, sparsity, protected, prune_attention=prune_attention)
    importance = compute_importance(model, "magnitude")
    plan = plan_for_ratio(importance, ratio, protected, prune_attention=prune_attention)
    return submodel_sharing_weights(model, plan).eval()


def step_cpu_per_round(path: Path) -> tuple[float, list[float]]:
    """Mean clients' step CPU-s per trained round of a ``bench_llm_round.py`` JSON, and its non-NaN windows."""
    report = json.loads(path.read_text())
    rows = report["rounds"]
    cpu = [float(r["client_train_cpu_s_sum"]) for r in rows if r.get("client_train_cpu_s_sum")]
    windows = [
        float(r["ratio_window"]) for r in rows if not math.isnan(float(r.get("ratio_window", math.nan)))
    ]
    return sum(cpu) / len(cpu), windows


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    cfg = load_config(args.config)
    model_dir = resolve_model_path(cfg.model.path)
    task = build_task(cfg)
    data = task.prepare(cfg, load_tokenizer(model_dir))
    split = eval_subset(data.test, cfg.training.eval_subset, cfg.seed)
    lengths = _prompt_lengths(split.labels)
    dense = task.load_model(model_dir, len(data.label_names), cfg.seed).eval()
    with (
        torch.no_grad()
    ):  # the prefix scoring runs once: GroupForward decides it (and whether a cache exists)
        shared = GroupForward(dense, split.input_ids, lengths).shared
    models = {"dense": dense}
    if cfg.pruning.target_sparsity > 0:
        models[f"sparsity {cfg.pruning.target_sparsity:g}"] = pruned_copy(
            dense,
            cfg.pruning.target_sparsity,
            list(cfg.pruning.protected_layers),
            cfg.pruning.prune_attention,
        )
    dtype = getattr(torch, args.eval_dtype)
    if dtype != torch.float32:  # as server.eval_dtype serves them (the FLOP count needs only the shapes)
        models = {name: model.to(dtype) for name, model in models.items()}
    report: dict[str, Any] = {
        "config": cfg.name,
        "eval_dtype": args.eval_dtype,
        "examples": len(split),
        "prompt_tokens_mean": float(lengths.float().mean()),
        "shared_prefix_tokens": shared,
        "threads": torch.get_num_threads(),
        "models": {},
    }
    with torch.no_grad():
        for name, model in models.items():
            timing = time_evaluation(task, model, split, cfg.training.eval_batch_size, args.repeats)
            if name != "dense":  # pruned by magnitude without recovery: only its shape is meaningful
                timing.pop("test_accuracy")
            flops = evaluation_linear_flops(model, lengths, shared)
            flops += evaluation_attention_flops(model, lengths, shared)
            timing.update(
                gflop=flops / 1e9,
                gflops_per_s=flops / timing["cpu_s"] / 1e9,
                sparsity=float(prunable_units(model).sparsity),
            )
            report["models"][name] = timing
    hidden, inner = dense.config.hidden_size, dense.config.intermediate_size
    group = max(1, int(round(float((lengths - shared).float().mean()))))
    report["gemm_gflops"] = {
        f"{group}x{hidden}x{inner}": gemm_gflops(group, hidden, inner, dtype=dtype),
        f"{group * 4}x{hidden}x{inner}": gemm_gflops(group * 4, hidden, inner, dtype=dtype),
        "2048x2048x2048": gemm_gflops(2048, 2048, 2048, dtype=dtype),
    }
    peak = max(report["gemm_gflops"].values())
    for timing in report["models"].values():
        timing["share_of_peak"] = timing["gflops_per_s"] / peak
    if args.rounds_json:
        step_cpu, windows = step_cpu_per_round(Path(args.rounds_json))
        eval_cpu = min(t["cpu_s"] for t in report["models"].values())
        report["rounds_json"] = str(args.rounds_json)
        report["step_cpu_s_per_round"] = step_cpu
        report["evaluated_window_floor"] = 1.0 + eval_cpu / step_cpu
        report["measured_windows"] = windows
    return report


def print_report(report: dict[str, Any]) -> None:
    print(
        f"{report['config']}: {report['examples']} prompts, {report['prompt_tokens_mean']:.1f} tokens on average, "
        f"{report['shared_prefix_tokens']} shared (run once), {report['threads']} thread, "
        f"{report.get('eval_dtype', 'float32')}"
    )
    for name, t in report["models"].items():
        print(
            f"  {name:14s} evaluation {t['cpu_s']:.2f} CPU-s (wall {t['wall_s']:.2f} s), {t['gflop']:.0f} GFLOP, "
            f"{t['gflops_per_s']:.0f} GFLOP/s = {100 * t['share_of_peak']:.0f} % of the best torch.mm below"
            + (f", accuracy {t['test_accuracy']:.3f}" if "test_accuracy" in t else "")
        )
    print(
        f"  torch.mm ({report.get('eval_dtype', 'float32')}), one thread: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in report["gemm_gflops"].items())
    )
    if "evaluated_window_floor" in report:
        print(
            f"  clients' steps {report['step_cpu_s_per_round']:.1f} CPU-s per round ({report['rounds_json']}): "
            f"an evaluated window cannot read below {report['evaluated_window_floor']:.3f} (goal <= {GOAL}), "
            f"measured windows {', '.join(f'{w:.2f}' for w in report['measured_windows'])}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(shipped_config_path("fedspine-smollm2.yaml")))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--rounds-json", default=None, help="a bench_llm_round.py JSON of the same config")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)
    report = run(args)
    print_report(report)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
