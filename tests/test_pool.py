"""Pooled placement (runtime/pool.py): virtual clients on per-class worker pools, through real Ray."""

import os
import time

import pandas as pd
import pytest

from fedspine_ray.config import ConfigError, config_from_dict
from fedspine_ray.devices.population import build_client_devices
from fedspine_ray.launch.results import read_run
from fedspine_ray.runner import run_experiment
from fedspine_ray.runtime.pool import (
    check_cluster_fits,
    pool_sizes,
    pool_slots,
    resolve_placement,
    worker_devices,
)

from .test_e2e_fedspine import fedspine_config
from .test_e2e_ray import tiny_config


def _devices(num_clients: int, mix: dict | None = None):
    raw = {"clients": {"num_clients": num_clients}}
    if mix:
        raw["devices"] = {"mix": mix}
    return build_client_devices(config_from_dict(raw))


def test_auto_placement_pools_only_when_the_cluster_cannot_host_every_client():
    devices = _devices(8)  # default resources: 0.25 and 0.125 CPUs per client actor
    assert resolve_placement("auto", devices, {"CPU": 8.0}) == "dedicated"
    # requests fit (1.5 CPUs) but 8 processes would share 2 cores: pooled
    assert resolve_placement("auto", devices, {"CPU": 2.0}) == "pooled"
    assert resolve_placement("auto", devices, {"CPU": 1.0}) == "pooled"
    assert resolve_placement("auto", devices, {"CPU": 8.0, "memory": 1e9}) == "pooled"
    assert resolve_placement("dedicated", devices, {"CPU": 1.0}) == "dedicated"


def test_pool_affinity_is_fixed_and_covers_every_client_of_its_class():
    devices = _devices(80, {"jetson_tx2": 0.375, "xavier_nx": 0.5, "agx_xavier": 0.125})
    sizes = pool_sizes(devices, {"CPU": 2.0}, None)
    assert set(sizes) == {"jetson_tx2", "xavier_nx", "agx_xavier"} and all(n >= 1 for n in sizes.values())
    slots = pool_slots(devices, {"jetson_tx2": 2, "xavier_nx": 3, "agx_xavier": 1})
    assert sorted(cid for ids in slots.values() for cid in ids) == list(range(80))
    classes = {d.client_id: d.device_class for d in devices}
    assert all({classes[c] for c in ids} == {slot[0]} for slot, ids in slots.items())
    assert len(slots) == 6 and slots == pool_slots(
        devices, {"jetson_tx2": 2, "xavier_nx": 3, "agx_xavier": 1}
    )
    assert len(worker_devices(devices, sizes)) == sum(sizes.values())


def test_pool_size_mapping_sizes_the_named_classes_and_leaves_the_rest_to_the_cluster():
    # the SmolLM2 mix: the four AGX Orins are the only devices that train the dense model
    devices = _devices(8, {"jetson_tx2": 0.25, "xavier_nx": 0.25, "agx_orin": 0.5})
    auto = pool_sizes(devices, {"CPU": 2.0}, None)
    assert auto == {"jetson_tx2": 1, "xavier_nx": 1, "agx_orin": 1}
    assert pool_sizes(devices, {"CPU": 2.0}, {"agx_orin": 2}) == {**auto, "agx_orin": 2}
    assert pool_sizes(devices, {"CPU": 2.0}, {"jetson_tx2": 9})["jetson_tx2"] == 2  # capped at its clients
    assert pool_sizes(devices, {"CPU": 2.0}, 3) == {"jetson_tx2": 2, "xavier_nx": 2, "agx_orin": 3}
    slots = pool_slots(devices, pool_sizes(devices, {"CPU": 2.0}, {"agx_orin": 2}))
    orins = [ids for (name, _), ids in slots.items() if name == "agx_orin"]
    assert len(orins) == 2 and sorted(map(len, orins)) == [2, 2]  # four Orins over two workers
    config = config_from_dict(
        {"clients": {"num_clients": 8, "pool_size": {"agx_orin": 2}}, "devices": {"mix": {"agx_orin": 1.0}}}
    )
    assert config.clients.pool_size == {"agx_orin": 2}


def test_workers_whose_memory_requests_exceed_the_cluster_fail_at_once_naming_the_fix():
    # Six SmolLM2 pool workers ask ~3.4 GiB each; a 2-core box's Ray has less than their sum. Without this
    # check the run waited out runtime.actor_start_timeout_s (300 s) before failing.
    devices = _devices(6)
    total = sum(d.actor_options()["memory"] for d in devices)
    assert total > 0
    check_cluster_fits(devices, available={"CPU": 8.0, "memory": float(total)})  # exactly fits
    with pytest.raises(
        RuntimeError, match=r"6 pool workers request .* GiB of Ray memory .*fix: a smaller clients.pool_size"
    ):
        check_cluster_fits(devices, "pool workers", available={"CPU": 8.0, "memory": total / 2})
    with pytest.raises(RuntimeError, match="CPUs in total"):
        check_cluster_fits(devices, available={"CPU": 0.1, "memory": float(total)})


@pytest.mark.parametrize(
    ("clients", "field"),
    [
        ({"num_clients": 10, "fraction_per_round": 1.5}, "clients.fraction_per_round"),
        (
            {"num_clients": 10, "fraction_per_round": 0.5, "clients_per_round": 3},
            "clients.fraction_per_round",
        ),
        ({"placement": "shared"}, "clients.placement"),
        ({"pool_size": 0}, "clients.pool_size"),
        ({"pool_size": {"cpu0.25": 0}}, "clients.pool_size"),
        ({"pool_size": {"cpu0.25": "two"}}, "clients.pool_size"),
        # without devices.mix the classes are the resources' (cpu0.25 and cpu0.125 by default)
        ({"pool_size": {"agx_orin": 2}}, r"clients.pool_size.agx_orin: not a device class of this run; "),
    ],
)
def test_bad_client_placement_fields_are_named(clients, field):
    with pytest.raises(ConfigError, match=field):
        config_from_dict({"clients": clients})
    if "resources" not in clients:  # the default resources' classes are accepted by name
        config_from_dict({"clients": {"pool_size": {"cpu0.25": 2, "cpu0.125": 1}}})


def test_fraction_per_round_samples_that_share():
    assert (
        config_from_dict({"clients": {"num_clients": 1000, "fraction_per_round": 0.02}}).clients.per_round()
        == 20
    )


@pytest.mark.slow
def test_same_seed_same_metrics_in_dedicated_and_pooled_mode(
    ray_session,
    tiny_llama_dir,
    tiny_text_csv,
    profiles_path,
    tmp_path,
):
    """FedSpine (sub-models derived on the devices): one worker per class serves two clients, sharing models.

    The pooled run also evaluates each round while the next one trains (runtime.overlap_evaluation) and
    the dedicated run does not, so the comparison covers that the overlap changes no metric.
    """
    runs = {}
    for placement, overlap in (("dedicated", False), ("pooled", True)):
        config = fedspine_config(
            tiny_llama_dir,
            tiny_text_csv,
            tmp_path / placement,
            profiles_path,
        ).with_overrides(
            {
                "training.rounds": 4,
                "training.local_steps": 2,
                "clients.placement": placement,
                "clients.pool_size": 1,
                "runtime.overlap_evaluation": overlap,
            }
        )
        run_experiment(config, progress=False)
        runs[placement] = read_run(tmp_path / placement)
    (rounds_d, clients_d), (rounds_p, clients_p) = runs["dedicated"], runs["pooled"]
    assert rounds_d["client_processes"].iloc[-1] == 4 and rounds_p["client_processes"].iloc[-1] == 2
    round_cols = [
        "train_loss",
        "test_loss",
        "test_accuracy",
        "bytes_up",
        "bytes_down",
        "sim_time_s",
        "sparsity",
    ]
    pd.testing.assert_frame_equal(rounds_d[round_cols], rounds_p[round_cols])
    client_cols = ["client_id", "status", "loss_mean", "bytes_down", "base_transfer", "sim_time_s", "arm"]
    pd.testing.assert_frame_equal(clients_d[client_cols], clients_p[client_cols])
    assert (clients_p["base_transfer"] == "derived").any()  # the derivation path ran in pooled workers
    assert (rounds_p.loc[1:, "client_train_s_sum"] > 0).all()
    # rounds 1-4 were dispatched while the previous round (round 0 included) was evaluated; the last one has
    # no next round
    assert rounds_p["eval_overlapped"].tolist() == [True, True, True, True, False]
    assert not rounds_d["eval_overlapped"].any()
    assert rounds_p.loc[0, "next_round_start_s"] > 0 and rounds_d.loc[0, "next_round_start_s"] == 0
    # with overlap a round's window runs from the previous report to its own: the windows tile the run
    windows = rounds_p["wall_time_s"].diff().iloc[2:]
    assert windows.to_numpy() == pytest.approx(rounds_p["round_wall_time_s"].iloc[2:].to_numpy(), abs=1e-6)


def test_a_killed_pool_worker_fails_its_clients_for_the_round_and_is_replaced(
    ray_session, tiny_llama_dir, tiny_text_csv, tmp_path
):
    import ray

    killed = []

    def kill_worker(row):
        if row["round"] == 1:
            name = next(n for n in ray.util.list_named_actors() if "-pool-cpu0.5-0" in n)
            ray.kill(ray.get_actor(name))
            killed.append(name)

    config = tiny_config(
        tiny_llama_dir,
        tiny_text_csv,
        tmp_path / "kill",
        clients={"num_clients": 4, "placement": "pooled", "pool_size": 1},
        training={"rounds": 3, "local_steps": 2},
        # round 2 must not start before the kill (with overlap it would be dispatched, and could finish,
        # while round 1 is evaluated)
        runtime={"overlap_evaluation": False},
    )
    run_experiment(config, progress=False, on_round=kill_worker)
    rounds, clients = read_run(tmp_path / "kill")
    assert killed
    status = clients.set_index(["round", "client_id"])["status"]
    # clients 0 and 2 (class cpu0.5) live on the killed worker, 1 and 3 on the other one
    assert [status[(2, c)] for c in range(4)] == ["actor_died", "ok", "actor_died", "ok"]
    assert all(status[(3, c)] == "ok" for c in range(4))  # replaced worker serves them again
    assert rounds["num_aggregated"].tolist() == [0, 4, 2, 4]
    transfer = clients.set_index(["round", "client_id"])["base_transfer"]
    assert transfer[(3, 0)] == "full" and transfer[(3, 1)] == "cached"  # lost state is re-downloaded


def test_a_replacement_no_live_node_can_host_is_given_up_at_once_not_after_the_start_timeout(ray_session):
    """A node that dies unseen: the replacement was asked for while it still looked alive, then Ray holds the
    now-infeasible request pending. The wait polls the live nodes and stops instead of blocking the round."""
    import ray

    from fedspine_ray.runtime.pool import _Processes

    @ray.remote(num_cpus=0, resources={"fedspine_gone_class": 1})
    class Never:
        def ready(self) -> dict:
            return {"node_id": "x"}

    @ray.remote(num_cpus=0)
    class Starts:
        def ready(self) -> dict:
            return {"node_id": "here"}

    waiting = _Processes()
    waiting.timeout = 120.0
    actor = Never.remote()
    began = time.monotonic()
    assert waiting._started(actor, {"resources": {"fedspine_gone_class": 1}}, poll_s=0.2) is None
    assert time.monotonic() - began < 30  # not the 120 s timeout
    ray.kill(actor)
    assert waiting._started(Starts.remote(), {"num_cpus": 0}) == {"node_id": "here"}


def test_device_state_shares_bases_and_copies_on_write():
    import torch
    from torch import nn

    from fedspine_ray.runtime.client import ProcessModels

    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4))

    state = ProcessModels()
    first = model()
    state.static = {"0.weight": first[0].weight}
    shared = state.adopt("v1", first)
    assert state.adopt("v1", model()) is shared and state.holders["v1"] == 2  # second copy dropped
    other = model()
    assert state.adopt("v2", other) is other
    assert other[0].weight.data_ptr() == first[0].weight.data_ptr()  # one process-wide static copy
    private = state.take("v1")  # a client about to derive in place gets its own Linear ...
    assert private is not shared and state.holders["v1"] == 1
    assert private[0].weight.data_ptr() == first[0].weight.data_ptr()  # ... but shares the embedding
    torch.testing.assert_close(private[1].weight, shared[1].weight)
    with torch.no_grad():
        private[1].weight.add_(1.0)
    assert not torch.equal(private[1].weight, shared[1].weight)
    assert state.take("v1") is shared and "v1" not in state.whole  # the last holder takes it without a copy
    state.release("v2")
    assert state.whole == {} and state.holders == {}


def test_evaluation_overlaps_by_default_only_with_a_free_core_and_the_simulated_clock():
    from fedspine_ray.runtime.server import overlap_by_default

    assert overlap_by_default("simulated", {"CPU": 1.5})
    assert not overlap_by_default("simulated", {"CPU": 0.5})  # clients hold the cores: it gains nothing
    assert not overlap_by_default("wall", {"CPU": 8.0})  # measured device times would be slowed


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")
def test_idle_priority_thread_runs_torch_at_idle_priority_with_identical_results():
    import threading

    import torch

    from fedspine_ray.runtime.idle_priority import IdlePriorityThread

    torch.manual_seed(0)
    x, w = torch.randn(64, 96), torch.randn(96, 384)

    def forward() -> tuple[torch.Tensor, int, int]:
        tid = threading.get_native_id()
        return torch.nn.functional.gelu(x @ w).sum(dim=1), tid, os.sched_getscheduler(tid)

    reference, main_tid, main_policy = forward()
    idle = IdlePriorityThread()
    try:
        result, tid, policy = idle.run(forward)
    finally:
        idle.shutdown()
    assert idle.priority == "idle" and policy == os.SCHED_IDLE and tid != main_tid
    assert main_policy != os.SCHED_IDLE  # the caller's own thread keeps its priority
    assert torch.equal(result, reference)
