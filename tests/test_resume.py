"""Checkpoints and resume: strategy state round trips, a crashed run resumed gives the uninterrupted metrics.

The end-to-end tests use real Ray actors and the tiny LLaMA. FedSpine is the method under test because it
changes the most state between rounds: bandits, a pruned global model, sub-models held by devices and
derived from one another.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from fedspine_ray.config import ConfigError
from fedspine_ray.launch.checkpoint_files import (
    CHECKPOINT_FILE,
    CheckpointError,
    checkpoint_bytes,
    checkpoint_round,
    write_checkpoint_file,
)
from fedspine_ray.launch.results import read_run
from fedspine_ray.messages import ClientOutcome
from fedspine_ray.runtime.checkpoint import (
    decode_checkpoint,
    deduplicate_clients,
    encode_checkpoint,
    restore_clients,
)
from fedspine_ray.strategies import STRATEGIES, ServerContext, build_strategy

from .test_e2e_ray import cli_subprocess_env, tiny_config
from .test_strategies import make_context

#: Per-round columns a resumed run must reproduce exactly (bytes, simulated clock, structure) ...
EXACT_ROUND_COLUMNS = ["round", "bytes_down", "bytes_up", "sim_time_s", "num_aggregated", "total_params"]
#: ... and to float tolerance (training and evaluation run in fresh processes).
CLOSE_ROUND_COLUMNS = ["train_loss", "test_loss", "test_accuracy"]
EXACT_CLIENT_COLUMNS = ["round", "client_id", "status", "pruning_ratio", "lora_rank", "arm", "bytes_down"]


# ------------------------------------------------------------------ strategy state (no Ray)
def _play_round(strategy, rnd: int, ctx: ServerContext) -> None:
    """One configure/aggregate round with made-up client updates, so the strategy's state moves."""
    assignments = strategy.configure_round(rnd, [0, 1])
    outcomes = []
    for cid, assignment in assignments.items():
        generator = torch.Generator().manual_seed(rnd * 10 + cid)
        factors = {
            name: (a + 0.05 * torch.randn(a.shape, generator=generator), b + 0.05)
            for name, (a, b) in assignment.factors.items()
        }
        outcome = ClientOutcome(
            cid, assignment, ctx.client_num_samples[cid], factors=factors, head=assignment.head
        )
        outcome.loss_first, outcome.loss_last, outcome.sim_time_s = 1.0, 0.5 + 0.1 * cid, 1.0 + cid
        outcomes.append(outcome)
    strategy.aggregate_round(rnd, outcomes)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_resumes_from_its_state_dict(tiny_llama_dir, name):
    sections = {
        "method": {"name": name},
        "pruning": {"target_sparsity": 0.5, "end_fraction": 1.0, "importance": "magnitude"},
        "bandit": {"pruning_ratios": [0.0, 0.5], "ranks": [2, 4]},
        "training": {"rounds": 3},
    }
    ctx, batch = make_context(tiny_llama_dir, **sections)
    strategy = build_strategy(name)
    strategy.setup(ctx)
    _play_round(strategy, 1, ctx)
    # what a checkpoint holds: the global model and the strategy state, pickled together
    buffer = io.BytesIO()
    torch.save({"model": ctx.global_model, "strategy": strategy.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    fresh_ctx, _ = make_context(tiny_llama_dir, **sections)
    fresh_ctx.global_model = saved["model"]
    resumed = build_strategy(name)
    resumed.setup(fresh_ctx)
    resumed.load_state_dict(saved["strategy"])
    assert resumed.ctx is fresh_ctx
    # both go on identically: same assignments, same aggregate, same evaluation model
    for rnd in (2, 3):
        a, b = strategy.configure_round(rnd, [0, 1]), resumed.configure_round(rnd, [0, 1])
        for cid in (0, 1):
            assert (a[cid].base_key, a[cid].rank, a[cid].arm) == (b[cid].base_key, b[cid].rank, b[cid].arm)
            torch.testing.assert_close(a[cid].factors, b[cid].factors)
        _play_round(strategy, rnd, ctx)
        _play_round(resumed, rnd, fresh_ctx)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    torch.testing.assert_close(
        strategy.evaluation_model()(**inputs).logits, resumed.evaluation_model()(**inputs).logits
    )
    assert strategy.global_metrics() == resumed.global_metrics()


def test_client_tensors_are_stored_once_and_restored_as_private_copies(tiny_llama_dir, tmp_path):
    from fedspine_ray.modeling.loading import load_classifier

    model = load_classifier(tiny_llama_dir, num_labels=2, seed=0)
    embed = model.model.embed_tokens.weight
    clients = {
        cid: {"base": load_classifier(tiny_llama_dir, num_labels=2, seed=0), "static": {"e": embed.clone()}}
        for cid in (0, 1)
    }
    state = {"round": 1, "global_model": model, "clients": clients, "strategy": {}}
    write_checkpoint_file(tmp_path, *encode_checkpoint(state))
    model_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert (tmp_path / CHECKPOINT_FILE).stat().st_size < 1.3 * model_bytes  # not 3 models + 2 embeddings
    assert checkpoint_round(tmp_path) == 1
    loaded = decode_checkpoint(checkpoint_bytes(tmp_path))
    for cid in (0, 1):
        base = loaded["clients"][cid]["base"]
        for (name, got), want in zip(base.state_dict().items(), model.state_dict().values(), strict=True):
            torch.testing.assert_close(got, want, msg=name)
        # equal tensors came back as separate memory: training one client cannot touch another
        norms = [m.weight.data_ptr() for m in base.modules() if type(m).__name__.endswith("RMSNorm")]
        assert len(set(norms)) == len(norms) > 1
    ptr = [loaded["clients"][c]["base"].model.embed_tokens.weight.data_ptr() for c in (0, 1)]
    assert ptr[0] != ptr[1]
    # the pool bookkeeping round-trips in memory too
    again = {0: {"base": load_classifier(tiny_llama_dir, num_labels=2, seed=0), "static": None}}
    shared = deduplicate_clients(model, again)
    assert shared["refs"] and again[0]["base"].model.embed_tokens.weight.numel() == 0
    restore_clients(again, shared)
    torch.testing.assert_close(again[0]["base"].model.embed_tokens.weight, embed)


def test_resume_without_checkpoint_is_a_config_error(tmp_path):
    from fedspine_ray.launch.checkpoint_files import resume_config

    with pytest.raises(CheckpointError, match="runtime.checkpoint_every"):
        checkpoint_bytes(tmp_path)
    with pytest.raises(ConfigError, match="--resume: .* holds no config.yaml"):
        resume_config(tmp_path, None, {})
    (tmp_path / "config.yaml").write_text("name: x\n")
    with pytest.raises(
        ConfigError, match="holds no checkpoint.pt; fix: run with --set runtime.checkpoint_every"
    ):
        resume_config(tmp_path, None, {})
    with pytest.raises(ConfigError, match="drop the CONFIG argument"):
        resume_config(tmp_path, "other.yaml", {})


def test_checkpoint_every_is_validated():
    from fedspine_ray.config import config_from_dict

    assert config_from_dict({}).runtime.checkpoint_every == 0
    with pytest.raises(ConfigError, match="runtime.checkpoint_every"):
        config_from_dict({"runtime": {"checkpoint_every": -1}})


# ------------------------------------------------------------------ end to end (real Ray)
def _fedspine_raw(tiny_llama_dir, tiny_text_csv, out_dir, profiles_path, rounds=3, every=2) -> dict:
    config = tiny_config(
        tiny_llama_dir,
        tiny_text_csv,
        out_dir,
        clients={"num_clients": 3},
        training={"rounds": rounds, "local_steps": 2},
        method={"name": "fedspine"},
        pruning={"target_sparsity": 0.5, "importance": "taylor", "end_fraction": 1.0},
        bandit={"pruning_ratios": [0.0, 0.5], "ranks": [2, 4]},
        devices={"mix": {"slow_box": 0.5, "fast_box": 0.5}, "profiles_path": str(profiles_path)},
        runtime={"checkpoint_every": every},
    )
    return config.to_dict()


#: ``fedspine run`` whose process exits 3 when it imported a package that belongs in the actors only.
LIGHT_LAUNCHER = """
import sys
from fedspine_ray.cli import main
code = main(sys.argv[1:])
heavy = sorted(name for name in ("torch", "transformers", "peft", "deepspeed") if name in sys.modules)
if heavy:
    print("launching process imported", heavy, file=sys.stderr)
sys.exit(code or (3 if heavy else 0))
"""


def _run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, timeout=900, capture_output=True, text=True)
    assert done.returncode == 0, f"{command} exited {done.returncode}: {done.stderr[-3000:]}"


def assert_same_metrics(resumed_dir: Path, reference_dir: Path) -> None:
    rounds, clients = read_run(resumed_dir)
    ref_rounds, ref_clients = read_run(reference_dir)
    assert rounds["round"].tolist() == ref_rounds["round"].tolist()
    pd.testing.assert_frame_equal(rounds[EXACT_ROUND_COLUMNS], ref_rounds[EXACT_ROUND_COLUMNS])
    pd.testing.assert_frame_equal(
        rounds[CLOSE_ROUND_COLUMNS], ref_rounds[CLOSE_ROUND_COLUMNS], check_exact=False, atol=1e-4, rtol=1e-4
    )
    pd.testing.assert_frame_equal(clients[EXACT_CLIENT_COLUMNS], ref_clients[EXACT_CLIENT_COLUMNS])
    pd.testing.assert_series_equal(clients["sim_time_s"], ref_clients["sim_time_s"])


def test_a_run_that_crashed_resumes_with_the_uninterrupted_metrics(
    ray_session, tiny_llama_dir, tiny_text_csv, profiles_path, tmp_path
):
    from fedspine_ray.config import config_from_dict
    from fedspine_ray.runner import run_experiment

    reference = config_from_dict(
        _fedspine_raw(tiny_llama_dir, tiny_text_csv, tmp_path / "ref", profiles_path)
    )
    run_experiment(reference, progress=False)

    crashed = config_from_dict(_fedspine_raw(tiny_llama_dir, tiny_text_csv, tmp_path / "run", profiles_path))

    def crash_in_round_3(row):
        if row["round"] == 3:  # its rows are on disk, its checkpoint is not (checkpoint_every: 2)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(crashed, progress=False, on_round=crash_in_round_3)
    assert checkpoint_round(tmp_path / "run") == 2
    assert read_run(tmp_path / "run")[0]["round"].tolist() == [0, 1, 2, 3]
    result = run_experiment(crashed, progress=False, resume=True)
    assert result.rounds["round"].tolist() == [0, 1, 2, 3]
    rounds, clients = read_run(tmp_path / "run")
    assert rounds["sparsity"].iloc[-1] > 0.3  # the checkpoint held a pruned global model
    assert (clients["base_transfer"] == "derived").any()  # devices kept their sub-models across the resume
    assert_same_metrics(tmp_path / "run", tmp_path / "ref")


@pytest.mark.slow
def test_cli_run_killed_with_sigkill_resumes_with_the_uninterrupted_metrics(
    tiny_llama_dir, tiny_text_csv, profiles_path, tmp_path
):
    """``fedspine run`` in its own process group, SIGKILLed during round k, then ``fedspine run --resume``."""
    rounds, kill_in = 4, 3
    for name in ("ref", "run"):
        raw = _fedspine_raw(tiny_llama_dir, tiny_text_csv, tmp_path / name, profiles_path, rounds, every=1)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    env = cli_subprocess_env()
    command = [sys.executable, "-m", "fedspine_ray.cli", "run", "--quiet"]
    # The reference run and the resume go through a launcher that fails if the CLI process imported a
    # heavy package: it only steps rounds, writes rows and moves checkpoint bytes (runtime/remote.py).
    light = [sys.executable, "-c", LIGHT_LAUNCHER, "run", "--quiet"]
    _run([*light, str(tmp_path / "ref.yaml")], env)

    process = subprocess.Popen(
        [*command, str(tmp_path / "run.yaml")],
        env=env,
        start_new_session=True,
        stderr=(tmp_path / "run.log").open("w"),
    )
    try:
        deadline = time.monotonic() + 300
        while checkpoint_round(tmp_path / "run") != kill_in - 1:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()[
                -3000:
            ]
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)  # the CLI, its Ray, the server and the clients, mid round k
    finally:
        process.wait(timeout=60)
    assert read_run(tmp_path / "run")[0]["round"].max() == kill_in - 1
    _run([*light, "--resume", str(tmp_path / "run")], env)
    assert_same_metrics(tmp_path / "run", tmp_path / "ref")


def test_sweep_resume_without_state_is_a_config_error(tmp_path, capsys):
    from fedspine_ray.cli import main

    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "never_ran", "search_space": {"seed": [0, 1]}}))
    code = main(["sweep", str(sweep), "--storage-path", str(tmp_path), "--resume"])
    assert code == 2
    assert "--resume: " in capsys.readouterr().err


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_trials(tiny_llama_dir, tiny_text_csv, tmp_path):
    """``fedspine sweep`` SIGKILLed during its second trial, then ``fedspine sweep --resume``."""
    base = tiny_config(
        tiny_llama_dir,
        tiny_text_csv,
        tmp_path / "unused",
        clients={"num_clients": 2},
        training={"rounds": 3, "local_steps": 2},
        runtime={"checkpoint_every": 1},
    ).to_dict()
    base.pop("output_dir")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "resumable", "base": base, "search_space": {"seed": [0, 1]}}))
    runs = tmp_path / "sweeps" / "resumable" / "runs"
    # TUNE_GLOBAL_CHECKPOINT_S=0: Tune saves its experiment state at every step (default: every >= 10 s)
    env = {**cli_subprocess_env(), "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    command = [
        sys.executable,
        "-m",
        "fedspine_ray.cli",
        "sweep",
        str(sweep),
        "--storage-path",
        str(tmp_path / "sweeps"),
    ]
    process = subprocess.Popen(
        [*command, "--quiet"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "sweep.log").open("w"),
    )
    try:
        deadline = time.monotonic() + 500
        while True:
            assert process.poll() is None and time.monotonic() < deadline, (
                tmp_path / "sweep.log"
            ).read_text()[-3000:]
            dirs = list(runs.iterdir()) if runs.is_dir() else []
            finished = [d for d in dirs if (d / "summary.json").is_file()]
            running = [d for d in dirs if d not in finished and checkpoint_round(d) in (1, 2)]
            if finished and running:
                break
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    finished_rounds = (finished[0] / "rounds.parquet").stat().st_mtime_ns
    partial = read_run(running[0])[0]
    _run([*command, "--resume", "--quiet"], env)
    table = pd.read_parquet(tmp_path / "sweeps" / "resumable" / "trials.parquet")
    assert sorted(table["seed"]) == [0, 1] and (table["status"] == "ok").all()
    assert (table["round"] == 3).all()
    # the finished trial was not run again, the interrupted one continued from its run's checkpoint
    assert (finished[0] / "rounds.parquet").stat().st_mtime_ns == finished_rounds
    resumed = read_run(running[0])[0]
    assert resumed["round"].tolist() == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(
        resumed.iloc[: len(partial.loc[partial["round"] <= 1])], partial[partial["round"] <= 1]
    )
