"""The pruning baselines and FedSpine ablations, and device-side pruning, end to end through real Ray."""

import pytest

from fedspine_ray.launch.results import read_run
from fedspine_ray.runner import run_experiment

from .test_e2e_fedspine import fedspine_config


def run_method(tmp_path, tiny_llama_dir, tiny_text_csv, profiles, method, **overrides):
    """``method`` for 3 rounds on the tiny LLaMA and the two test device classes (pruning to 0.4, arms of
    ratio 0 / 0.5 and rank 2 / 4) through real Ray; the run's (rounds, clients) tables."""
    config = fedspine_config(tiny_llama_dir, tiny_text_csv, tmp_path / method, profiles).with_overrides(
        {
            "method.name": method,
            "training.rounds": 3,
            "training.local_steps": 4,
            "pruning.end_fraction": 0.7,
            "pruning.target_sparsity": 0.4,
            "bandit.pruning_ratios": [0.0, 0.5],
            "bandit.ranks": [2, 4],
            **overrides,
        }
    )
    run_experiment(config, progress=False)
    return read_run(tmp_path / method)


@pytest.mark.parametrize(
    "method",
    [
        "fixed_ratio",
        "random_arms",
        "prune_then_tune",
        "fedspine_no_bandit",
        "fedspine_no_prune",
        "fedspine_no_rank",
    ],
)
def test_baselines_run_and_reach_equal_sparsity(
    ray_session,
    tiny_llama_dir,
    tiny_text_csv,
    profiles_path,
    tmp_path,
    method,
):
    rounds, clients = run_method(tmp_path, tiny_llama_dir, tiny_text_csv, profiles_path, method)
    assert rounds["round"].tolist() == [0, 1, 2, 3] and (clients["status"] == "ok").all()
    assert rounds["sparsity"].iloc[-1] == pytest.approx(0.4, abs=0.05)  # equal final sparsity
    assert rounds["test_loss"].notna().all()
    ratios = clients.groupby("device_class")["pruning_ratio"]
    ranks = clients.groupby("device_class")["lora_rank"]
    if method == "prune_then_tune":  # pruned before round 0, then plain FedIT
        assert rounds["sparsity"].iloc[0] == pytest.approx(0.4, abs=0.05)
        assert (clients["pruning_ratio"] == 0).all()
    if method == "fixed_ratio":  # the median of the grid for everyone
        assert (clients["pruning_ratio"] == 0.25).all() and (clients["lora_rank"] == 4).all()  # lora.rank
    if method == "fedspine_no_bandit":  # capacity-ordered static arms
        assert ratios.max()["slow_box"] == 0.5 and ratios.max()["fast_box"] == 0.0
        assert ranks.max()["slow_box"] == 2 and ranks.max()["fast_box"] == 4
    if method == "fedspine_no_prune":
        assert (clients["pruning_ratio"] == 0).all() and set(clients["lora_rank"]) <= {2, 4}
    if method == "fedspine_no_rank":
        assert (clients["lora_rank"] == 4).all()
    if method == "random_arms":
        assert clients["arm"].between(0, 3).all()


@pytest.mark.parametrize("local_share", [0.5, 0.0])
def test_device_side_pruning_through_ray(
    ray_session, tiny_llama_dir, tiny_text_csv, profiles_path, tmp_path, local_share
):
    """``local_share: 0.5``: devices remove half their ratio themselves. ``0`` (the shipped SmolLM2 config): they
    remove nothing and only score; the server's sub-models and global prune steps run on those scores."""
    rounds, clients = run_method(
        tmp_path,
        tiny_llama_dir,
        tiny_text_csv,
        profiles_path,
        "fedspine",
        **{
            "pruning.where": "client",
            "pruning.local_share": local_share,
            "pruning.local_prune_every": 1,
            "bandit.pruning_ratios": [0.5],
        },
    )
    assert (clients["status"] == "ok").all()
    if local_share:
        assert (clients["units_pruned_on_device"] > 0).all()  # every device removed units itself
    else:
        assert (clients["units_pruned_on_device"] == 0).all()
    assert rounds["sparsity"].iloc[-1] == pytest.approx(0.4, abs=0.05)
    assert rounds["test_loss"].notna().all()


def test_no_bandit_ablation_keeps_the_time_model_so_fill_budget_applies(
    ray_session, tiny_llama_dir, tiny_text_csv, profiles_path, tmp_path
):
    """fedspine_no_bandit + rounds.fill: arms stay static, the fast devices still fill the round."""
    rounds, clients = run_method(
        tmp_path,
        tiny_llama_dir,
        tiny_text_csv,
        profiles_path,
        "fedspine_no_bandit",
        **{"rounds.fill": True, "rounds.fill_max_factor": 3.0},
    )
    assert (clients["status"] == "ok").all()
    assert clients.groupby("client_id")["pruning_ratio"].nunique().eq(1).all()  # static arms
    later = clients[clients["round"] >= 2].groupby("device_class")["local_steps"]
    assert (clients.loc[clients["round"] == 1, "local_steps"] == 4).all()  # nothing observed yet
    assert later.max()["slow_box"] == 4 and later.min()["fast_box"] > 4
    assert rounds.loc[rounds["round"] >= 2, "time_budget_s"].notna().all()
