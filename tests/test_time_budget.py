"""A simulated-time budget derived from the population (``training.sim_time_budget_fedit_rounds``)."""

import json

import pytest
import yaml

from fedspine_ray.config import ConfigError
from fedspine_ray.launch.results import read_run
from fedspine_ray.runner import run_experiment

from .test_e2e_fedspine import fedspine_config


def test_budget_is_dense_fedits_time_and_fedspine_stops_there(
    ray_session, tiny_llama_dir, tiny_text_csv, profiles_path, tmp_path
):
    """The budget predicted at set-up is within a few % of what a real FedIT run's clock then reads."""
    common = {"clients": {"num_clients": 4}, "pruning": {"target_sparsity": 0.3}}
    fedit = fedspine_config(
        tiny_llama_dir,
        tiny_text_csv,
        tmp_path / "fedit",
        profiles_path,
        method={"name": "fedit", "prune_global": False},
        training={"rounds": 3},
        **common,
    )
    run_experiment(fedit, progress=False)
    fedit_time = read_run(tmp_path / "fedit")[0]["sim_time_s"].iloc[-1]

    spine = fedspine_config(
        tiny_llama_dir,
        tiny_text_csv,
        tmp_path / "spine",
        profiles_path,
        training={"rounds": 30, "sim_time_budget_fedit_rounds": 3},
        **common,
    )
    run_experiment(spine, progress=False)
    written = yaml.safe_load((tmp_path / "spine" / "config.yaml").read_text())["training"]
    budget = written["max_sim_time_s"]
    assert written["sim_time_budget_fedit_rounds"] is None  # resolved: config.yaml holds the effective budget
    # token counts are predicted as an expectation over random batches; everything else is the same clock
    assert budget == pytest.approx(fedit_time, rel=0.1)
    summary = json.loads((tmp_path / "spine" / "summary.json").read_text())
    assert summary["max_sim_time_s"] == budget and summary["sim_time_budget_fedit_rounds"] == 3
    sim = read_run(tmp_path / "spine")[0]["sim_time_s"]
    # FedSpine's rounds are shorter: it gets more of them, and stops at the first one that spends the budget
    assert len(sim) - 1 > 3 and sim.iloc[-1] >= budget > sim.iloc[-2]


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"training": {"max_sim_time_s": 50.0, "sim_time_budget_fedit_rounds": 10}}, "set only one"),
        ({"training": {"sim_time_budget_fedit_rounds": 10}, "runtime": {"clock": "wall"}}, "runtime.clock"),
        ({"training": {"sim_time_budget_fedit_rounds": 0}}, "must be in [1, 100000]"),
    ],
)
def test_budget_config_errors_name_the_fix(
    tiny_llama_dir, tiny_text_csv, profiles_path, tmp_path, sections, message
):
    with pytest.raises(ConfigError, match="sim_time_budget_fedit_rounds") as error:
        fedspine_config(tiny_llama_dir, tiny_text_csv, tmp_path / "x", profiles_path, **sections)
    assert message in str(error.value)
