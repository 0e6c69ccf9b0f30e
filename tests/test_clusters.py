"""The `ray up` cluster files parse, carry the keys the launcher needs and cover every device class."""

from __future__ import annotations

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


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_file_has_launcher_keys(path):
    cluster = load(path)
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
    setup = "\n".join(cluster["setup_commands"])
    assert "torch==2.13.0" in setup
    # torch first (CPU wheels), then the project, so the project's pin does not pull a CUDA torch
    assert setup.index("torch==2.13.0") < setup.index("pip install -e .")
    assert cluster["head_start_ray_commands"] and cluster["worker_start_ray_commands"]


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
