"""``runtime.clock: wall`` with the methods (issue 24, part 3): the round time is what the clients' processes
really took, and the round-time model (budgets, FedSpine's arm choice, ``rounds.fill``) learns from it.

On simulated devices the clock charges FLOPs over a profile's speed plus bytes over its links; on the wall
clock a client's time is its measured fit (training, deriving its model, wrapping LoRA), and transfers are
not timed (they go through Ray's object store). docs/devices.md says when to use which.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedspine_ray.config.names import METHOD_NAMES
from fedspine_ray.launch.results import read_run
from fedspine_ray.runner import run_experiment

from .test_e2e_fedspine import fedspine_config

#: One method per way of using device times: fixed arms (FedIT), ranks by capacity (FlexLoRA), the bandit with
#: the time model choosing arms (FedSpine), fixed arms by known capacity with the time model filling rounds
#: (FedSpine without the bandit, ``rounds.fill``). The others share these code paths; each run costs about a
#: minute of a loaded 2-core box.
WALL_METHODS = ("fedit", "flexlora", "fedspine", "fedspine_no_bandit")


def test_the_wall_clock_methods_are_registered_methods():
    assert set(WALL_METHODS) <= set(METHOD_NAMES)


@pytest.mark.slow
def test_methods_run_on_the_wall_clock_and_the_time_model_learns_from_it(
    ray_session, tiny_llama_dir, tiny_text_csv, profiles_path, tmp_path
):
    for method in WALL_METHODS:
        out = tmp_path / method
        config = fedspine_config(tiny_llama_dir, tiny_text_csv, out, profiles_path).with_overrides(
            {
                "method.name": method,
                "clients.num_clients": 2,
                "clients.placement": "pooled",
                "training.rounds": 2,
                "training.local_steps": 2,
                "runtime.clock": "wall",
                "rounds.fill": method == "fedspine_no_bandit",
            }
        )
        run_experiment(config, progress=False)
        rounds, clients = read_run(out)
        assert (clients["status"] == "ok").all(), (method, clients[["round", "client_id", "status"]])
        # a client's time is its measured fit; transfers are not timed on the wall clock
        np.testing.assert_allclose(clients["sim_time_s"], clients["wall_time_s"])
        assert clients["sim_download_s"].isna().all() and (clients["wall_time_s"] > 0).all()
        # the round lasts as long as its slowest client (rounds.end: wait_all), in measured seconds
        slowest = clients.groupby("round")["sim_time_s"].max()
        np.testing.assert_allclose(rounds["sim_time_s"].diff().iloc[1:], slowest.to_numpy(), rtol=1e-9)
        # round 1 observed every device's wall time; round 2's budget is predicted from it
        assert math.isinf(rounds["time_budget_s"].iloc[1]), method
        budget = rounds["time_budget_s"].iloc[2]
        assert math.isfinite(budget) and budget > 0, method
        if (
            method == "fedit"
        ):  # the same work every round: predicted = observed, budget = (1 + slack) x slowest
            first = clients[clients["round"] == 1]["sim_time_s"].max()
            assert budget == pytest.approx((1 + config.rounds.time_slack) * first, rel=1e-6)
