"""FedSpine end to end through real Ray actors on heterogeneous simulated devices (tiny real LLaMA)."""

import numpy as np
import pytest

from fedspine_ray.launch.results import read_run
from fedspine_ray.runner import run_experiment

from .test_e2e_ray import tiny_config


# Two user-defined device classes (profiles are user-extensible): compute dominates transfers, and the
# slow class is 20x slower (a Jetson Nano vs an AGX Orin is ~30x), so the bandit must learn to prune the
# slow devices' sub-models.
def _box(flops_per_s: float) -> dict:
    fast_links = {"uplink_bps": 1.0e10, "downlink_bps": 1.0e10}
    return {
        "flops_per_s": flops_per_s,
        "memory_bytes": 4.0e9,
        "fluctuation": 0.05,
        **fast_links,
        "ray_num_cpus": 0.25,
        "ray_memory_bytes": 3.0e8,
    }


PROFILES = {"slow_box": _box(5.0e9), "fast_box": _box(1.0e11)}  # written by conftest's profiles_path


def fedspine_config(tiny_llama_dir, tiny_text_csv, out_dir, profiles_path, **overrides):
    sections = {
        "clients": {"num_clients": 4},
        "training": {"rounds": 8, "local_steps": 4},
        "method": {"name": "fedspine"},
        "pruning": {"target_sparsity": 0.5, "importance": "taylor"},
        "bandit": {"pruning_ratios": [0.0, 0.5], "ranks": [4], "gamma": 0.95, "exploration": 0.1},
        "devices": {"mix": {"slow_box": 0.5, "fast_box": 0.5}, "profiles_path": str(profiles_path)},
    }
    for key, value in overrides.items():
        sections[key] = {**sections.get(key, {}), **value}
    return tiny_config(tiny_llama_dir, tiny_text_csv, out_dir, **sections)


def test_fedspine_prunes_for_weak_devices_and_records_arms(
    ray_session, tiny_llama_dir, tiny_text_csv, profiles_path, tmp_path
):
    config = fedspine_config(tiny_llama_dir, tiny_text_csv, tmp_path / "fs", profiles_path)
    run_experiment(config, progress=False)
    rounds, clients = read_run(tmp_path / "fs")
    assert rounds["round"].tolist() == list(range(9))
    assert len(clients) == 4 * 8 and (clients["status"] == "ok").all()
    assert clients["arm"].ge(0).all() and clients["reward"].between(0, 1).all()
    assert set(clients["device_class"]) == {"slow_box", "fast_box"}
    # the global model was pruned iteratively to the target and shrank accordingly
    assert rounds["sparsity"].is_monotonic_increasing
    assert rounds["sparsity"].iloc[-1] == pytest.approx(0.5, abs=0.05)
    assert rounds["total_params"].iloc[-1] < rounds["total_params"].iloc[0]
    # after the exploration rounds, weak devices get higher pruning ratios than strong ones
    late = clients[clients["round"] >= 4]
    by_class = late.groupby("device_class")["pruning_ratio"].mean()
    assert by_class["slow_box"] > by_class["fast_box"], by_class
    # round-time model (rounds.time_model): unknown devices start at the cheapest arm; from round 2 the
    # slow devices, which set the budget, never play the full model that would hold the round back
    assert (clients.loc[clients["round"] == 1, "pruning_ratio"] == 0.5).all()
    slow_later = clients[(clients["round"] >= 2) & (clients["device_class"] == "slow_box")]
    assert (slow_later["pruning_ratio"] == 0.5).all()
    assert rounds["time_budget_s"].iloc[2:].notna().all() and (rounds["time_budget_s"].iloc[2:] > 0).all()
    budget = rounds.set_index("round")["time_budget_s"]
    on_time = clients[clients["round"] >= 2].apply(
        lambda row: row["sim_time_s"] <= 1.5 * budget[row["round"]], axis=1
    )
    assert on_time.all()  # predictions hold up to the profiles' 5 % fluctuation (+ slack)
    # a more-pruned sub-model really is smaller and cheaper per token
    ok = clients[clients["round"] == 1]
    small, big = ok.loc[ok["pruning_ratio"].idxmax()], ok.loc[ok["pruning_ratio"].idxmin()]
    if small["pruning_ratio"] > big["pruning_ratio"]:
        assert (
            small["model_params"] < big["model_params"] and small["flops_per_token"] < big["flops_per_token"]
        )
    assert np.isfinite(rounds["test_accuracy"]).all()


@pytest.mark.parametrize("method", ["hetlora", "flexlora"])
def test_heterogeneous_rank_baselines_run(
    ray_session, tiny_llama_dir, tiny_text_csv, profiles_path, tmp_path, method
):
    config = fedspine_config(
        tiny_llama_dir,
        tiny_text_csv,
        tmp_path / method,
        profiles_path,
    ).with_overrides({"method.name": method, "training.rounds": 2, "bandit.ranks": [2, 4]})
    run_experiment(config, progress=False)
    rounds, clients = read_run(tmp_path / method)
    ranks = clients.groupby("device_class")["lora_rank"].first()
    assert ranks["slow_box"] == 2 and ranks["fast_box"] == 4  # rank by device capability
    assert (clients["pruning_ratio"] == 0).all() and (rounds["sparsity"] == 0).all()
    assert rounds["test_loss"].notna().all()


def test_time_budget_stops_the_run_and_paces_pruning(
    ray_session, tiny_llama_dir, tiny_text_csv, profiles_path, tmp_path
):
    """``training.max_sim_time_s``: the run ends at the first round whose clock reaches the budget (before
    the round cap) and the pruning schedule runs on simulated time, reaching the target by
    ``end_fraction`` of the budget."""
    budget = 0.5  # simulated s; a round of this population takes about 0.06 s
    config = fedspine_config(
        tiny_llama_dir,
        tiny_text_csv,
        tmp_path / "timed",
        profiles_path,
        training={"rounds": 40, "max_sim_time_s": budget},
        pruning={"schedule": "linear"},
    )
    result = run_experiment(config, progress=False)
    rounds, _ = read_run(tmp_path / "timed")
    clock = rounds["sim_time_s"].to_numpy()
    assert 3 <= len(rounds) - 1 < 40, clock  # stopped on time, not on the cap
    assert clock[-1] >= budget > clock[-2]
    assert result.summary["rounds"] == rounds["round"].iloc[-1]
    # the linear schedule follows the clock, not the round count (which would prune until round 24 of 40)
    scheduled = 0.5 * np.minimum(1.0, clock / (0.6 * budget))
    # (within the tiny model's unit granularity; by rounds, round 5 would be at 0.5 * 5 / 24 = 0.1)
    assert np.abs(rounds["sparsity"].to_numpy() - scheduled).max() < 0.1, rounds["sparsity"]
    assert rounds["pruned_this_round"].sum() >= 3
    # the first round ending past 0.6 x budget prunes to the target itself, and nothing prunes after it
    first_full = int(np.argmax(clock >= 0.6 * budget))
    assert rounds["sparsity"].iloc[first_full] == pytest.approx(0.5, abs=0.01)
    assert (rounds["pruned_this_round"].iloc[first_full + 1 :] == 0).all()
    assert (rounds["majority_accuracy"] > 0).all()


def test_fill_budget_trains_fast_devices_longer_without_lengthening_rounds(
    ray_session, tiny_llama_dir, tiny_text_csv, profiles_path, tmp_path
):
    config = fedspine_config(
        tiny_llama_dir,
        tiny_text_csv,
        tmp_path / "fill",
        profiles_path,
        training={"rounds": 4},
        rounds={"fill": True, "fill_max_factor": 3.0},
    )
    run_experiment(config, progress=False)
    rounds, clients = read_run(tmp_path / "fill")
    assert (clients["status"] == "ok").all()
    first, later = clients[clients["round"] == 1], clients[clients["round"] >= 2]
    assert (first["local_steps"] == 4).all()  # no device observed yet: nothing to predict a fill from
    # the slow devices set the round's end and keep their steps; the fast ones, 20x faster, would wait
    # most of the round and train up to fill_max_factor x local_steps instead
    by_class = later.groupby("device_class")["local_steps"]
    assert (by_class.max()["slow_box"], by_class.min()["fast_box"]) == (4, 12)
    # the clock charges the extra steps: tokens per step are the same for every step of a client
    per_step = clients["tokens_processed"] / clients["local_steps"]
    assert (per_step.groupby(clients["client_id"]).nunique() == 1).all()
    budget = rounds.set_index("round")["time_budget_s"]
    assert (later["sim_time_s"] <= 1.5 * later["round"].map(budget)).all()


@pytest.mark.parametrize(("method", "normalise"), [("fedit", False), ("flexlora", True)])
def test_fill_is_a_round_policy_a_dense_baseline_fills_too(
    ray_session, tiny_llama_dir, tiny_text_csv, profiles_path, tmp_path, method, normalise
):
    """rounds.fill is not FedSpine's: a dense baseline's fast devices train longer instead of waiting, and its
    rounds are set by its own slowest device (no pruning, no bandit, every device on the full model); with
    method.normalise_steps the filled updates are aggregated step-normalised (FedNova)."""
    config = fedspine_config(
        tiny_llama_dir,
        tiny_text_csv,
        tmp_path / method,
        profiles_path,
        training={"rounds": 3},
        method={"name": method, "normalise_steps": normalise},
        pruning={"target_sparsity": 0.0},
        bandit={"pruning_ratios": [0.0], "ranks": [2, 4]},
        rounds={"fill": True, "fill_max_factor": 3.0},
    )
    run_experiment(config, progress=False)
    rounds, clients = read_run(tmp_path / method)
    assert (clients["status"] == "ok").all() and (clients["pruning_ratio"] == 0.0).all()
    first, later = clients[clients["round"] == 1], clients[clients["round"] >= 2]
    assert (first["local_steps"] == 4).all()  # nothing observed yet
    by_class = later.groupby("device_class")["local_steps"]
    assert by_class.max()["slow_box"] == 4 and by_class.min()["fast_box"] > 4
    budget = rounds.set_index("round")["time_budget_s"]
    assert budget.loc[1] == float("inf") and np.isfinite(budget.loc[2:]).all()
    # the round still ends with the slow devices: no filled device outlasts the budget's end by much
    assert (later["sim_time_s"] <= 1.5 * later["round"].map(budget)).all()
    assert rounds["train_loss"].iloc[1:].notna().all() and (rounds["num_aggregated"].iloc[1:] == 4).all()


def test_eval_every_skips_only_the_measurement(
    ray_session, tiny_llama_dir, tiny_text_csv, profiles_path, tmp_path
):
    """``training.eval_every: 2`` over 3 rounds evaluates rounds 0, 2 and 3 (the last) and nothing else: the
    skipped rows have no test metrics (NaN, not a stale value) and the same model size, and every round's
    training, clock and pruning is what the same seed gives with every round evaluated."""
    runs = {}
    for every in (1, 2):
        out = tmp_path / f"every{every}"
        config = fedspine_config(
            tiny_llama_dir,
            tiny_text_csv,
            out,
            profiles_path,
            training={"rounds": 3, "local_steps": 1, "eval_every": every},
        )
        run_experiment(config, progress=False)
        runs[every] = read_run(out)[0].set_index("round")
    every1, every2 = runs[1], runs[2]
    skipped = every2["eval_samples"] == 0
    assert skipped[skipped].index.tolist() == [1]
    assert every2.loc[1, ["test_loss", "test_accuracy", "majority_accuracy"]].isna().all()
    assert every2.loc[1, "eval_cpu_s"] == 0 and not every2.loc[1, "eval_overlapped"]
    same = ["train_loss", "sim_time_s", "sparsity", "total_params", "bytes_down", "bytes_up"]
    assert every2[same].equals(every1[same])
    assert every2.loc[1, "total_params"] < every2.loc[0, "total_params"]  # pruned in round 1, counted
    evaluated = [0, 2, 3]
    assert every2.loc[evaluated, ["test_loss", "test_accuracy"]].equals(
        every1.loc[evaluated, ["test_loss", "test_accuracy"]]
    )
