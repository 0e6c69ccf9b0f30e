"""benchmarks/bench_eval_floor.py's FLOP count, checked against what torch computes in the real scoring path.

The benchmark's "share of the matrix-multiply peak" is only as true as its FLOP count, and the count has to follow
what ``next_token_logprobs`` runs: the shared prompt prefix once, each example's own tokens, the LM head at one
position per example (``logits_to_keep``) and at the prefix's positions.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fedspine_ray.modeling.loading import load_causal_lm
from fedspine_ray.modeling.tasks import GroupForward, _shared_prefix, next_token_logprobs

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_eval_floor.py"
_SPEC = importlib.util.spec_from_file_location("bench_eval_floor", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def _prompts(shared: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (6, 20), generator=generator)
    ids[:, :shared] = ids[0, :shared]
    ids[:, shared] = torch.arange(6) + 200  # every prompt differs right after the shared part
    return ids, torch.tensor([10, 12, 12, 15, 20, 9])


@pytest.mark.parametrize("shared", [7, 0])
def test_linear_flops_equal_what_torch_multiplies(tiny_llama_dir: Path, shared: int) -> None:
    model = load_causal_lm(tiny_llama_dir).eval()
    ids, lengths = _prompts(shared)
    found = _shared_prefix(ids, lengths)
    assert found == shared
    with torch.no_grad():
        run_once = GroupForward(model, ids, lengths).shared  # what the scoring below runs once
    assert run_once == shared
    with FlopCounterMode(display=False) as counter:
        next_token_logprobs(model, ids, lengths, batch_size=4)
    counted = sum(counter.get_flop_counts()["Global"].values())
    assert counted == bench.evaluation_linear_flops(model, lengths, run_once)


def test_attention_flops_count_causal_keys(tiny_llama_dir: Path) -> None:
    model = load_causal_lm(tiny_llama_dir).eval()
    width = model.config.num_attention_heads * (model.config.hidden_size // model.config.num_attention_heads)
    layers = model.config.num_hidden_layers
    lengths = torch.tensor([3, 5])
    # prefix of 2 run once (keys 1 + 2), then positions 2 (3 keys) and 2, 3, 4 (3 + 4 + 5 keys)
    keys = (1 + 2) + 3 + (3 + 4 + 5)
    assert bench.evaluation_attention_flops(model, lengths, 2) == 4.0 * width * layers * keys


def test_floor_reads_the_round_benchmarks_json(tmp_path: Path) -> None:
    rows = [
        {"round": 1, "client_train_cpu_s_sum": 60.0, "ratio_window": 1.4},
        {"round": 2, "client_train_cpu_s_sum": 50.0, "ratio_window": 1.3},
        {"round": 3, "client_train_cpu_s_sum": 0.0, "ratio_window": math.nan},  # nothing trained
    ]
    path = tmp_path / "round.json"
    path.write_text(json.dumps({"rounds": rows}))
    step_cpu, windows = bench.step_cpu_per_round(path)
    assert step_cpu == pytest.approx(55.0)
    assert windows == [1.4, 1.3]
