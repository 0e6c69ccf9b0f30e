"""End to end through real Ray actors: tiny real LLaMA, real tokenizer, real files, Parquet results."""

import pandas as pd
import pytest

from fedspine_ray.config import config_from_dict
from fedspine_ray.launch.results import CLIENTS_FILE, ROUNDS_FILE, read_run
from fedspine_ray.runner import run_experiment


def tiny_config(model_dir, data_csv, out_dir, **sections):
    raw = {
        "name": "e2e",
        "seed": 0,
        "output_dir": str(out_dir),
        "model": {"path": str(model_dir), "max_seq_len": 32},
        "data": {
            "source": "files",
            "train_path": str(data_csv),
            "max_train_samples": 400,
            "max_test_samples": 120,
        },
        "partition": {"kind": "iid"},
        "clients": {
            "num_clients": 3,
            "resources": [{"num_cpus": 0.5, "memory_mb": 512}, {"num_cpus": 0.25, "memory_mb": 256}],
        },
        "training": {"rounds": 3, "local_steps": 10, "batch_size": 16, "lr": 0.003},
        "lora": {"rank": 4, "alpha": 8},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return config_from_dict(raw)


def cli_subprocess_env() -> dict[str, str]:
    """A fresh local Ray per CLI process. Its memory monitor is off: on a box shared with other jobs it kills
    workers for memory the test does not use (the node total), which is not what these tests check."""
    import os

    return {**os.environ, "RAY_ADDRESS": "", "RAY_memory_monitor_refresh_ms": "0"}


def test_fedit_run_through_ray_actors_writes_parquet_and_learns(
    ray_session, tiny_llama_dir, tiny_text_csv, tmp_path
):
    config = tiny_config(tiny_llama_dir, tiny_text_csv, tmp_path / "run")
    result = run_experiment(config, progress=False)
    rounds, clients = read_run(tmp_path / "run")
    assert (tmp_path / "run" / ROUNDS_FILE).is_file() and (tmp_path / "run" / CLIENTS_FILE).is_file()
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "versions.json").is_file()
    assert rounds["round"].tolist() == [0, 1, 2, 3]
    assert len(clients) == 3 * 3 and set(clients["client_id"]) == {0, 1, 2}
    assert (clients["status"] == "ok").all()
    assert set(clients["device_class"]) == {"cpu0.5", "cpu0.25"}  # heterogeneous actor resources
    assert clients["num_samples"].groupby(clients["round"]).sum().eq(400).all()
    assert (rounds.loc[1:, "bytes_up"] > 0).all() and (rounds.loc[1:, "bytes_down"] > 0).all()
    # the full base model is sent once; later rounds only move adapters and head
    assert rounds.loc[1, "bytes_down"] > 10 * rounds.loc[2, "bytes_down"]
    assert rounds["trainable_params"].iloc[-1] < rounds["total_params"].iloc[-1] / 5
    train_loss = rounds["train_loss"].tolist()
    assert train_loss[3] < train_loss[1], train_loss
    assert rounds["test_loss"].iloc[-1] < rounds["test_loss"].iloc[0]
    assert result.summary["final_accuracy"] == pytest.approx(rounds["test_accuracy"].iloc[-1])
    # atomic writes leave no temporary files behind
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


def test_same_seed_gives_same_metrics(ray_session, tiny_llama_dir, tiny_text_csv, tmp_path):
    runs = []
    for name in ("a", "b"):
        config = tiny_config(
            tiny_llama_dir, tiny_text_csv, tmp_path / name, training={"rounds": 2, "local_steps": 3}
        )
        runs.append(run_experiment(config, progress=False).rounds)
    columns = ["train_loss", "test_loss", "test_accuracy", "bytes_up", "bytes_down"]
    pd.testing.assert_frame_equal(runs[0][columns], runs[1][columns])


def test_a_dead_client_actor_is_dropped_and_the_run_goes_on(
    ray_session, tiny_llama_dir, tiny_text_csv, tmp_path
):
    import ray

    def kill_client_1(row):
        if row["round"] == 1:
            name = next(n for n in ray.util.list_named_actors() if n.endswith("-client-1"))
            ray.kill(ray.get_actor(name))

    config = tiny_config(
        tiny_llama_dir,
        tiny_text_csv,
        tmp_path / "kill",
        training={"rounds": 3, "local_steps": 2},
        clients={"placement": "dedicated"},  # one actor per client, so killing one kills that client only
        # round 2 must not start before the kill (overlapped, it would be dispatched before round 1's row)
        runtime={"overlap_evaluation": False},
    )
    run_experiment(config, progress=False, on_round=kill_client_1)
    rounds, clients = read_run(tmp_path / "kill")
    status = clients.set_index(["round", "client_id"])["status"]
    assert status[(1, 1)] == "ok" and status[(2, 1)] == "actor_died"
    assert (2, 1) in status and (3, 1) not in status  # dropped from later rounds
    assert rounds["num_aggregated"].tolist() == [0, 3, 2, 2]


def test_cli_run_console_shows_progress_and_no_ray_or_transformers_noise(
    tiny_llama_dir, tiny_text_csv, tmp_path
):
    """What a newcomer sees from ``fedspine run`` (not ``--quiet``: actor output is forwarded): round progress,
    and none of the per-actor lines issue 8 asked to remove (Ray's start-up notices, transformers' weight
    loading bars and load reports, raylet worker-start warnings)."""
    import subprocess
    import sys

    import yaml

    config = tiny_config(
        tiny_llama_dir, tiny_text_csv, tmp_path / "run", training={"rounds": 1, "local_steps": 2}
    )
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config.to_dict()))
    env = cli_subprocess_env()
    done = subprocess.run(
        [sys.executable, "-m", "fedspine_ray.cli", "run", str(tmp_path / "run.yaml")],
        env=env,
        timeout=600,
        capture_output=True,
        text=True,
    )
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-3000:]
    assert "round 1/1" in console and "done:" in console
    for noise in ("WARNING", "Loading weights", "LOAD REPORT", "MISSING", "Traceback"):
        assert noise not in console, f"{noise!r} in the console:\n{console[-3000:]}"
