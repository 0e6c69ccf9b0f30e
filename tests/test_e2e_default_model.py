"""The shipped configs on the real packaged model (all-MiniLM-L6-v2) and data, shrunk to CI size."""

import pytest

from fedspine_ray.config import load_config, shipped_config_path
from fedspine_ray.launch.results import read_run
from fedspine_ray.runner import run_experiment


@pytest.mark.slow
def test_shipped_fedspine_config_runs_on_the_real_model(ray_session, tmp_path):
    overrides = {
        "output_dir": str(tmp_path / "fedspine"),
        "clients.num_clients": 3,
        "training.rounds": 2,
        "training.local_steps": 2,
        "data.max_train_samples": 300,
        "data.max_test_samples": 64,
        "devices.mix": {"jetson_nano": 1, "agx_orin": 2},
        "bandit.pruning_ratios": [0.3, 0.6],
    }
    config = load_config(shipped_config_path("fedspine.yaml"), overrides)
    result = run_experiment(config, progress=False)
    rounds, clients = read_run(tmp_path / "fedspine")
    assert result.summary["method"] == "fedspine"
    assert len(clients) == 3 * 2 and set(clients["status"]) <= {"ok", "oom"}
    ok = clients[clients["status"] == "ok"]
    assert len(ok) >= 3 and ok["loss_first"].between(0.5, 2.0).all()  # 3-class cross-entropy near ln 3
    assert rounds["sparsity"].iloc[-1] > 0.05  # the real BERT was pruned structurally
    assert rounds["total_params"].iloc[-1] < rounds["total_params"].iloc[0]
    # MiniLM's memory model: a 60%-pruned sub-model fits the (scaled) Jetson Nano
    nano = clients[(clients["device_class"] == "jetson_nano") & (clients["pruning_ratio"] == 0.6)]
    assert (nano["status"] == "ok").all()
