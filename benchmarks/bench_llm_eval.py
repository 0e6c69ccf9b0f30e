"""The server's LLM evaluation with and without running the prompts' shared prefix once.

Loads a causal-LM config's test split and model the way the server does (``build_task(config).prepare``,
``load_model``) and times label-word scoring (``next_token_logprobs``) and the answer loss (``answer_loss``)
over the whole test split, each with ``share_prefix`` on and off, alternating for ``--repeats`` rounds in one
process so both see the same box. Prints the median seconds, the ratio and the largest difference between
the two's log-probabilities / losses; ``--json-out`` writes them.

Usage: python benchmarks/bench_llm_eval.py [--config fedspine_ray/configs/fedspine-smollm2.yaml]
       [--repeats 3] [--threads N] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from fedspine_ray.config import load_config, shipped_config_path  # noqa: E402
from fedspine_ray.modeling.loading import load_tokenizer, resolve_model_path  # noqa: E402
from fedspine_ray.modeling.tasks import (  # noqa: E402
    _prompt_lengths,
    _shared_prefix,
    answer_loss,
    build_task,
    next_token_logprobs,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(shipped_config_path("fedspine-smollm2.yaml")))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json-out")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    task = build_task(config)
    model_dir = resolve_model_path(config.model.path)
    test = task.prepare(config, load_tokenizer(model_dir)).test
    model = task.load_model(model_dir, 2, config.seed).eval()
    lengths = _prompt_lengths(test.labels)
    batch = config.training.eval_batch_size
    jobs = {
        "label_scoring": lambda share: next_token_logprobs(model, test.input_ids, lengths, batch, share),
        "answer_loss": lambda share: torch.tensor(answer_loss(model, test, batch, share)),
    }
    config_path = Path(args.config).resolve()
    result = {
        "config": str(
            config_path.relative_to(REPO_ROOT) if config_path.is_relative_to(REPO_ROOT) else config_path
        ),
        "examples": len(test),
        "shared_prefix_tokens": _shared_prefix(test.input_ids, lengths),
        "mean_prompt_tokens": float(lengths.float().mean()),
        "threads": torch.get_num_threads(),
    }
    for name, job in jobs.items():
        times: dict[bool, list[float]] = {True: [], False: []}
        outputs = {}
        for _ in range(args.repeats):
            for share in (False, True):
                start = time.perf_counter()
                outputs[share] = job(share)
                times[share].append(time.perf_counter() - start)
        whole, shared = (statistics.median(times[s]) for s in (False, True))
        result[name] = {
            "whole_prompts_s": whole,
            "shared_prefix_s": shared,
            "ratio": shared / whole,
            "max_abs_diff": float((outputs[True] - outputs[False]).abs().max()),
            "times_s": {"whole": times[False], "shared": times[True]},
        }
        print(
            f"{name}: whole prompts {whole:.2f} s, shared prefix {shared:.2f} s, "
            f"ratio {shared / whole:.2f}, max |diff| {result[name]['max_abs_diff']:.2e}"
        )
    print(
        f"{result['examples']} examples, {result['shared_prefix_tokens']} shared prefix tokens of "
        f"{result['mean_prompt_tokens']:.1f} on average, {result['threads']} threads"
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
