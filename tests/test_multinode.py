"""FedSpine across a real multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``), through the CLI's
``--address``: a head and three worker nodes, each advertising the custom resource of one device class as
``clusters/heterogeneous-cpu.yaml``'s node types do.

* placement by class: every client row's ``node_id`` is a node of the client's class, dedicated and pooled;
* a node lost mid-run: two worker nodes are removed while rounds run; the run finishes, the lost round's
  clients are ``actor_died``, the clients of the class that still has a node move there, the clients of the
  class that has none are ``unplaceable`` (no hang), and the rows already written stay;
* the driver killed (SIGKILL) and ``fedspine run --resume`` on the same cluster, after a node of the lost
  class joined again: the run completes with every round once and the rows before the checkpoint unchanged.

Sized for CI's 2 cores: a tiny LLaMA, 4 clients, a few rounds, one logical CPU per client process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fedspine_ray.launch.checkpoint_files import checkpoint_round
from fedspine_ray.launch.results import read_run

from .test_e2e_ray import cli_subprocess_env, tiny_config

MB = 1024 * 1024
#: Two test device classes; one client process per logical CPU (``ray_num_cpus: 1``) so the nodes' CPUs decide
#: where processes can go, and plenty of simulated memory so no arm runs out of it.
PROFILES = {
    name: {
        "flops_per_s": flops,
        "memory_bytes": 4.0e9,
        "uplink_bps": 1.0e10,
        "downlink_bps": 1.0e10,
        "fluctuation": 0.05,
        "ray_num_cpus": 1.0,
    }
    for name, flops in (("tier_a", 1.0e11), ("tier_b", 5.0e9))
}
RESOURCE = {name: f"fedspine_{name}" for name in PROFILES}
#: Rounds of the pooled run: the loss lands in round 2 or 3, the moved clients train in the next, the driver is
#: killed after that round's checkpoint, and at least one round is left for --resume.
POOLED_ROUNDS = 6


def _wait_for(
    condition, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None
):
    """Poll ``condition()`` until it returns a truthy value; fail naming ``what`` (and the driver's log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            pytest.fail(f"the driver exited ({proc.returncode}) before {what}:\n{tail}")
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}:\n{tail}")


def _tables(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    try:
        return read_run(run_dir)
    except (FileNotFoundError, OSError, ValueError):
        return None


@pytest.fixture()
def cluster(monkeypatch):
    """A head (no CPUs: the server actor asks for none) and worker nodes: two of class tier_a, one of tier_b."""
    from ray.cluster_utils import Cluster

    # Ray's memory monitor reads the whole box; on a machine shared with other jobs it kills workers for
    # memory this test does not use (cli_subprocess_env turns it off for the same reason).
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "0")
    small = {"object_store_memory": 100 * MB}
    made = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0, **small})
    nodes = {
        "a1": made.add_node(num_cpus=2, resources={RESOURCE["tier_a"]: 1000.0}, **small),
        "a2": made.add_node(num_cpus=2, resources={RESOURCE["tier_a"]: 1000.0}, **small),
        "b": made.add_node(num_cpus=1, resources={RESOURCE["tier_b"]: 1000.0}, **small),
    }
    made.wait_for_nodes()
    try:
        yield made, nodes
    finally:
        made.shutdown()


def _config_file(tmp_path: Path, tiny_llama_dir, tiny_text_csv, name: str, **sections) -> Path:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(yaml.safe_dump(PROFILES))
    base = {
        "clients": {"num_clients": 4, "pool_size": 2},
        "training": {"local_steps": 40, "batch_size": 8},  # fits of about two seconds: the loss lands mid-fit
        "method": {"name": "fedspine"},
        "pruning": {"target_sparsity": 0.25, "importance": "magnitude", "end_fraction": 0.5},
        "bandit": {"pruning_ratios": [0.0, 0.25], "ranks": [4]},
        "devices": {"mix": {"tier_a": 0.75, "tier_b": 0.25}, "profiles_path": str(profiles)},
        "runtime": {"actor_start_timeout_s": 240.0, "round_timeout_s": 600.0},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    config = tiny_config(tiny_llama_dir, tiny_text_csv, tmp_path / name, **base)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    return path


def _driver(config: Path | None, address: str, log: Path, resume: Path | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "fedspine_ray.cli", "run"]
    args += ["--resume", str(resume)] if resume is not None else [str(config)]
    args += ["--address", address, "--quiet"]
    with log.open("ab") as out:
        return subprocess.Popen(
            args, env=cli_subprocess_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the driver did not finish within {timeout}s:\n{log.read_text()[-3000:]}")
    assert code == 0, log.read_text()[-3000:]


def _classes_of_nodes(nodes: dict) -> dict[str, str]:
    return {node.node_id: ("tier_a" if key.startswith("a") else "tier_b") for key, node in nodes.items()}


def test_clients_run_on_nodes_of_their_class_survive_lost_nodes_and_resume(
    cluster, tiny_llama_dir, tiny_text_csv, tmp_path
):
    made, nodes = cluster
    address = made.address

    # ---- dedicated: one actor per client, each on a node advertising its class
    config = _config_file(
        tmp_path,
        tiny_llama_dir,
        tiny_text_csv,
        "dedicated",
        clients={"placement": "dedicated"},
        training={"rounds": 2, "local_steps": 5},  # placement only: no node is lost here
    )
    log = tmp_path / "dedicated.log"
    _finish(_driver(config, address, log), log)
    _, clients = read_run(tmp_path / "dedicated")
    node_class = _classes_of_nodes(nodes)
    assert (clients["status"] == "ok").all(), clients[["round", "client_id", "status"]]
    assert clients["node_id"].map(node_class).tolist() == clients["device_class"].tolist()
    assert clients.groupby("client_id")["node_id"].nunique().eq(1).all()  # an actor stays where it started

    # ---- pooled, with two worker nodes removed mid-run, the driver killed, and --resume
    run_dir = tmp_path / "pooled"
    config = _config_file(
        tmp_path,
        tiny_llama_dir,
        tiny_text_csv,
        "pooled",
        clients={"placement": "pooled"},
        training={"rounds": POOLED_ROUNDS},
        runtime={"checkpoint_every": 1},
    )
    log = tmp_path / "pooled.log"
    proc = _driver(config, address, log)
    try:
        # round 2 is dispatched right after round 1's checkpoint is written: the nodes go while it trains
        _wait_for(lambda: checkpoint_round(run_dir) == 1, 600, "round 1's checkpoint", proc, log)
        time.sleep(0.3)
        _, first = read_run(run_dir)
        assert first["node_id"].map(node_class).tolist() == first["device_class"].tolist()
        # the tier_a node hosting the lowest tier_a client: lost with the pool worker(s) on it
        a_rows = first[first["device_class"] == "tier_a"].sort_values("client_id")
        victim = next(k for k, n in nodes.items() if n.node_id == a_rows["node_id"].iloc[0])
        survivor = nodes["a2" if victim == "a1" else "a1"].node_id
        moved = set(a_rows.loc[a_rows["node_id"] == nodes[victim].node_id, "client_id"])
        b_clients = set(first.loc[first["device_class"] == "tier_b", "client_id"])
        # a round is running: its fits on these nodes die with them. SIGKILL at once (allow_graceful=False), as a
        # node that loses power: the graceful path waits on each process in turn, long enough for fits to end
        made.remove_node(nodes[victim], allow_graceful=False)
        made.remove_node(nodes["b"], allow_graceful=False)  # the only tier_b node: nowhere to go

        def lost_and_handled():
            tables = _tables(run_dir)
            if tables is None:
                return None
            rounds, clients = tables
            after = clients.set_index(["round", "client_id"])["status"]
            ok_later = (
                set(clients.loc[(clients["status"] == "ok") & (clients["node_id"] == survivor), "client_id"])
                & moved
            )
            stuck = {c for (r, c), s in after.items() if s == "unplaceable"}
            done = moved <= ok_later and b_clients <= stuck
            ckpt = checkpoint_round(run_dir)
            return tables if done and ckpt is not None and ckpt == int(rounds["round"].max()) else None

        rounds_before, clients_before = _wait_for(
            lost_and_handled, 600, "lost clients recorded, moved and unplaceable", proc, log
        )
        assert proc.poll() is None, "the run ended before the driver could be killed; raise training.rounds"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-run; its actors go with it
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    kept = checkpoint_round(run_dir)
    assert kept is not None and kept < POOLED_ROUNDS and not (run_dir / "summary.json").exists()

    # what the lost nodes did to the rounds before the kill. The nodes went while round 2 ran: a lost client
    # whose fit was in flight records the loss as a status (actor_died) in round 2, or in round 3 if its fit had
    # returned and its next call found the process gone; a client whose round-2 fit had returned (a loaded box)
    # and whose loss the server saw before dispatching round 3 goes straight to its new node or to
    # unplaceable. Never a crash or a missing row, and at least one fit died in flight.
    in_flight = 0
    for cid in moved | b_clients:
        rows = clients_before[clients_before["client_id"] == cid].set_index("round")["status"]
        died = rows.index[rows == "actor_died"].tolist()
        assert len(died) <= 1 and set(died) <= {2, 3}, rows
        last_ok = died[0] - 1 if died else 2
        in_flight += died == [2]
        assert (rows[rows.index <= last_ok] == "ok").all(), rows
        later = clients_before[(clients_before["client_id"] == cid) & (clients_before["round"] > last_ok)]
        later = later[later["status"] != "actor_died"]
        if cid in moved:  # then trained on the surviving tier_a node, re-downloading the model it lost; until
            # its new process has started there (runtime/pool.py waits briefly per round) it is unplaceable
            waiting = later["status"].eq("unplaceable").cummin()
            trained = later[~waiting]
            assert len(trained) >= 1 and (trained["status"] == "ok").all(), later
            assert (trained["node_id"] == survivor).all() and trained["base_transfer"].iloc[0] == "full", (
                later
            )
        else:  # then reported unplaceable every round (not a hang, not a crash)
            assert len(later) >= 1 and (later["status"] == "unplaceable").all(), later
            assert (later["bytes_down"] == 0).all()
    assert in_flight >= 1, clients_before[["round", "client_id", "status"]]
    others = clients_before[~clients_before["client_id"].isin(moved | b_clients)]
    assert (others["status"] == "ok").all()  # clients on the surviving node never noticed
    # every round aggregates exactly the fits that came back (zero is right when every client the round sampled
    # was on a lost node), and a later round trains again
    ok_per_round = clients_before[clients_before["status"] == "ok"].groupby("round").size()
    aggregated = rounds_before.set_index("round")["num_aggregated"].iloc[1:]
    assert aggregated.eq(ok_per_round.reindex(aggregated.index, fill_value=0)).all(), (
        aggregated,
        ok_per_round,
    )
    assert aggregated.iloc[-1] > 0

    # ---- a tier_b node joins again; resume the killed run on the cluster
    nodes["b2"] = made.add_node(
        num_cpus=1, resources={RESOURCE["tier_b"]: 1000.0}, object_store_memory=100 * MB
    )
    made.wait_for_nodes()
    log = tmp_path / "resume.log"
    _finish(_driver(None, address, log, resume=run_dir), log)
    rounds, clients = read_run(run_dir)
    assert rounds["round"].tolist() == list(range(POOLED_ROUNDS + 1))  # every round once
    assert (run_dir / "summary.json").is_file()
    before = clients_before[clients_before["round"] <= kept].reset_index(drop=True)
    pd.testing.assert_frame_equal(clients[clients["round"] <= kept].reset_index(drop=True), before)
    pd.testing.assert_frame_equal(
        rounds[rounds["round"] <= kept].reset_index(drop=True),
        rounds_before[rounds_before["round"] <= kept].reset_index(drop=True),
    )
    resumed = clients[clients["round"] > kept]
    assert (resumed["status"] == "ok").all(), resumed[["round", "client_id", "status"]]
    alive = {
        n.node_id: c
        for c, n in [("tier_a", nodes["a2" if victim == "a1" else "a1"]), ("tier_b", nodes["b2"])]
    }
    assert resumed["node_id"].map(alive).tolist() == resumed["device_class"].tolist()
