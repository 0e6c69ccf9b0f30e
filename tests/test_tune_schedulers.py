"""Sweeps as a Ray Tune user runs them: ASHA, Optuna (resumed with its searcher's state), PBT, and a crashed
trial retried from its checkpoint, all through real Ray Tune on the tiny LLaMA (issue 25).

Each sweep is a few trials of 1-4 rounds on 2 clients; the shared ``ray_session`` (2 CPUs) runs them.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from ray import tune

from fedspine_ray.launch.checkpoint_files import checkpoint_round
from fedspine_ray.launch.results import ROUNDS_FILE, SUMMARY_FILE, read_run
from fedspine_ray.launch.sweep_spec import TRIAL_FILE, TRIALS_FILE, sweep_from_dict
from fedspine_ray.launch.tune import run_sweep


def tiny_base(model_dir: Path, data_csv: Path, **sections: dict) -> dict:
    """A run of seconds: 2 clients, 1 local step, small splits (sections are merged over it)."""
    base = {
        "model": {"path": str(model_dir), "max_seq_len": 32},
        "data": {
            "source": "files",
            "train_path": str(data_csv),
            "max_train_samples": 64,
            "max_test_samples": 32,
        },
        "partition": {"kind": "iid"},
        "clients": {"num_clients": 2, "resources": [{"num_cpus": 0.25, "memory_mb": 256}]},
        "training": {"rounds": 2, "local_steps": 1, "batch_size": 8, "eval_batch_size": 64},
        "lora": {"rank": 2, "alpha": 4},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return base


def trial_info(output_dir: str | Path) -> dict:
    return json.loads((Path(output_dir) / TRIAL_FILE).read_text())


def wait_for_free_cluster(ray_session, timeout: float = 60.0) -> None:
    """Every trial's placement group (and the actors in it) is gone once the sweep returns."""
    total = ray_session.cluster_resources()["CPU"]
    deadline = time.monotonic() + timeout
    while ray_session.available_resources().get("CPU", 0) < total - 1e-6:
        assert time.monotonic() < deadline, (ray_session.available_resources(), total)
        time.sleep(0.5)


def test_asha_stops_trials_that_trail_at_a_rung(ray_session, tiny_llama_dir, tiny_text_csv, tmp_path):
    """ASHA over three trials run one after another. The metric is the trial's trainable parameter count
    (smaller is better), which LoRA rank decides exactly, so which trials ASHA stops at round 1 is certain:
    the two rank-8 trials trail the rank-2 one there. Storage is given as a ``file://`` URI."""
    spec = sweep_from_dict(
        {
            "name": "asha",
            "base": tiny_base(tiny_llama_dir, tiny_text_csv),
            "search_space": {"lora.rank": [2, 8, 8]},
            "metric": "trainable_params",
            "mode": "min",
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
            "storage_path": f"file://{tmp_path / 'sweeps'}",
        }
    )
    table = run_sweep(spec, quiet=True)
    assert (table["status"] == "ok").all(), table["error"].tolist()
    assert table["lora.rank"].tolist() == [2, 8, 8]
    assert table["stopped_early"].tolist() == [False, True, True]
    assert table["round"].tolist() == [2, 1, 1]  # the stopped ones' last report is the rung's round
    saved = pd.read_parquet(tmp_path / "sweeps" / "asha" / TRIALS_FILE)
    assert saved["stopped_early"].sum() == 2
    finished, *stopped = table["output_dir"]
    assert (Path(finished) / SUMMARY_FILE).is_file()
    for output_dir in stopped:  # stopped by Tune mid-run: rows up to the rung at least, no summary
        assert read_run(output_dir)[0]["round"].max() >= 1 and not (Path(output_dir) / SUMMARY_FILE).exists()
    wait_for_free_cluster(ray_session)


def remove_placement_groups(ray_session) -> None:
    """Remove the placement groups (and so the actors) a driver left behind: a dead driver's job owns them and
    Ray removes them when it ends, but this test's driver, the pytest process, keeps running."""
    from ray.util import placement_group_table, remove_placement_group
    from ray.util.placement_group import PlacementGroup

    for group_id, info in placement_group_table().items():
        if info["state"] != "REMOVED":
            remove_placement_group(PlacementGroup(ray_session.PlacementGroupID(bytes.fromhex(group_id))))


class CrashOnSecondTrial(tune.Callback):
    """Kills the sweep's driver (KeyboardInterrupt) when the second trial starts, once: the marker file makes
    the restored sweep, which unpickles this callback with the Tuner, run through."""

    def __init__(self, marker: Path) -> None:
        self.marker, self.started = marker, 0

    def on_trial_start(self, iteration, trials, trial, **info):  # noqa: ARG002
        self.started += 1
        if self.started == 2 and not self.marker.exists():
            self.marker.write_text("crashed")
            raise KeyboardInterrupt("the sweep's driver dies while its second trial starts")


def test_optuna_sweep_resumes_with_its_searchers_state(
    ray_session, tiny_llama_dir, tiny_text_csv, tmp_path, monkeypatch
):
    """Optuna TPE proposes three learning rates; the driver dies as the second trial starts, and ``--resume``
    (``Tuner.restore``) keeps the finished trial and continues the searcher from its saved state: the third
    trial gets Optuna's third proposal, where a fresh searcher would have proposed the first one again."""
    from ray.tune.search.optuna import OptunaSearch

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")  # Tune saves its state at every step
    space = {"training.lr": {"loguniform": [1e-4, 1e-2]}}
    spec = sweep_from_dict(
        {
            "name": "optuna",
            "base": tiny_base(tiny_llama_dir, tiny_text_csv, training={"rounds": 1}),
            "search_space": space,
            "search_alg": {"type": "optuna", "seed": 0},
            "num_samples": 3,
            "storage_path": str(tmp_path / "sweeps"),
        }
    )
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, quiet=True, callbacks=[CrashOnSecondTrial(tmp_path / "crashed")])
    remove_placement_groups(ray_session)  # what Ray does when a real driver dies (this one lives on)
    first = [d for d in (spec.sweep_dir / "runs").iterdir() if (d / SUMMARY_FILE).is_file()]
    assert len(first) == 1
    first_rows = (first[0] / ROUNDS_FILE).stat().st_mtime_ns

    table = run_sweep(spec, quiet=True, resume=True)
    assert len(table) == 3 and (table["status"] == "ok").all(), table["error"].tolist()
    assert (first[0] / ROUNDS_FILE).stat().st_mtime_ns == first_rows  # the finished trial did not run again
    searcher = OptunaSearch(seed=0)
    searcher.set_search_properties("test_accuracy", "max", {"training.lr": tune.loguniform(1e-4, 1e-2)})
    proposed = [searcher.suggest(f"t{i}")["training.lr"] for i in range(3)]  # TPE's seeded start-up draws
    assert sorted(table["training.lr"]) == pytest.approx(sorted(proposed))
    wait_for_free_cluster(ray_session)


@pytest.mark.slow
def test_pbt_clones_a_better_trial_from_its_tune_checkpoint(
    ray_session, tiny_llama_dir, tiny_text_csv, tmp_path
):
    """Population based training over two concurrent trials, synchronous (both wait at round 2, so the
    decision does not depend on which trial runs faster): the worse one is replaced by a copy of the better
    one's Tune checkpoint (its checkpoint.pt and tables) with a resampled learning rate, and runs round 3 from
    there. Slow (every pause costs a server set-up); the restore path itself is covered fast by
    ``test_a_crashed_trial_is_retried_from_its_tune_checkpoint``."""
    spec = sweep_from_dict(
        {
            "name": "pbt",
            "base": tiny_base(
                tiny_llama_dir, tiny_text_csv, training={"rounds": 3}, runtime={"checkpoint_every": 1}
            ),
            "search_space": {"training.lr": [1e-4, 1e-2]},
            "scheduler": {
                "type": "pbt",
                "perturbation_interval": 2,
                "synch": True,
                "quantile_fraction": 0.5,
                "resample_probability": 1.0,
                "hyperparam_mutations": {"training.lr": {"loguniform": [1e-4, 1e-2]}},
            },
            "max_concurrent_trials": 2,
            "storage_path": str(tmp_path / "sweeps"),
        }
    )
    table = run_sweep(spec, quiet=True)
    assert (table["status"] == "ok").all(), table["error"].tolist()
    infos = [trial_info(d) for d in table["output_dir"]]
    # synchronous PBT pauses both at round 2; each continues from a Tune checkpoint of round 2
    assert all(i["resumed_from"] == "tune" and i["resumed_after_round"] == 2 for i in infos), infos
    cloned = [i for i, info in enumerate(infos) if info["params"]["training.lr"] not in (1e-4, 1e-2)]
    assert len(cloned) == 1, infos  # the worse trial took the better one's checkpoint and a new learning rate
    clone, donor = (read_run(table["output_dir"][i])[0] for i in (cloned[0], 1 - cloned[0]))
    assert clone["round"].tolist() == [0, 1, 2, 3]  # the donor's history to round 2, then its own round 3
    columns = ["round", "test_accuracy", "test_loss", "sim_time_s", "bytes_up"]
    pd.testing.assert_frame_equal(
        clone.loc[clone["round"] <= 2, columns], donor.loc[donor["round"] <= 2, columns]
    )
    assert 1e-4 <= table["training.lr"][cloned[0]] <= 1e-2 and not table["stopped_early"].any()
    assert list(spec.sweep_dir.glob("run_trial_*/checkpoint_*"))  # Tune kept the trials' checkpoints
    wait_for_free_cluster(ray_session)


def test_a_crashed_trial_is_retried_from_its_tune_checkpoint(
    ray_session, tiny_llama_dir, tiny_text_csv, tmp_path
):
    """``max_failures: 1``: the trial's process is SIGKILLed once a checkpoint has reached Tune; Tune starts
    the trial again with that checkpoint, and the run continues after its round instead of from round 0.

    A trial reports round 2's checkpoint only after Tune took round 1's result (the function trainable waits
    for the driver between reports), so a second persisted checkpoint means Tune registered the first."""
    spec = sweep_from_dict(
        {
            "name": "retry",
            "base": tiny_base(
                tiny_llama_dir, tiny_text_csv, training={"rounds": 4}, runtime={"checkpoint_every": 1}
            ),
            "search_space": {"seed": [0]},
            "max_failures": 1,
            "storage_path": str(tmp_path / "sweeps"),
        }
    )
    runs = spec.sweep_dir / "runs"
    killed: list[int] = []

    def kill_after_the_second_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            persisted = [
                p for p in spec.sweep_dir.glob("run_trial_*/checkpoint_*") if p.name != "checkpoint_000000"
            ]
            trials = list(runs.glob("*/" + TRIAL_FILE)) if runs.is_dir() else []
            if persisted and trials and (checkpoint_round(trials[0].parent) or 0) >= 2:
                killed.append(trial_info(trials[0].parent)["pid"])
                os.kill(killed[0], signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_the_second_checkpoint, daemon=True)
    killer.start()
    table = run_sweep(spec, quiet=True)
    killer.join(timeout=10)
    assert killed, "the trial finished before it could be killed"
    assert table["status"].tolist() == ["ok"], table["error"].tolist()
    info = trial_info(table["output_dir"][0])
    assert info["pid"] != killed[0]  # a new trial process ...
    assert info["resumed_from"] == "tune" and info["resumed_after_round"] >= 1  # ... from Tune's checkpoint
    rounds = read_run(table["output_dir"][0])[0]
    assert rounds["round"].tolist() == [0, 1, 2, 3, 4]  # each round once: nothing lost, nothing repeated
    assert math.isfinite(table["test_accuracy"][0]) and not table["stopped_early"][0]
    wait_for_free_cluster(ray_session)
