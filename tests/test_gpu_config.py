"""GPU clients and what client processes ask Ray for (issue 24, part 1).

On a machine without a GPU (CI): GPU requests validate, fail before Ray starts with one line naming the field
(embedded Ray) or right after connecting (``--address``), and memory requests are derived from the model.
On a GPU machine (benchmarks/gpu_check.sh runs this file there), clients train on CUDA in fp32 / bf16 / fp16
and everything that crosses the network is on the CPU.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch

from fedspine_ray.config import ConfigError, config_from_dict
from fedspine_ray.devices.population import (
    MB,
    build_client_devices,
    client_memory_request,
    model_footprint,
)
from fedspine_ray.devices.profiles import DeviceProfile, load_device_profiles
from fedspine_ray.launch.preflight import check_gpus, gpu_request, local_gpus

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(
    not CUDA, reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs these there)"
)


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"clients": {"resources": [{"num_gpus": -0.5}]}}, r"clients\.resources\[0\]\.num_gpus"),
        ({"clients": {"resources": [{"num_gpus": 65}]}}, r"clients\.resources\[0\]\.num_gpus"),
        ({"clients": {"resources": [{"memory_mb": 10}]}}, r"clients\.resources\[0\]\.memory_mb"),
        ({"clients": {"precision": "int8"}}, r"clients\.precision"),
        ({"server": {"num_ranks": 2}}, r"server\.num_ranks"),  # ranks need the deepspeed backend
        ({"server": {"backend": "deepspeed", "num_ranks": 0}}, r"server\.num_ranks"),
    ],
)
def test_bad_gpu_and_rank_fields_are_named(raw, field):
    with pytest.raises(ConfigError, match=field):
        config_from_dict(raw)


def test_gpu_requests_reach_the_actor_options():
    config = config_from_dict(
        {"clients": {"num_clients": 2, "precision": "bf16", "resources": [{"num_cpus": 1, "num_gpus": 0.25}]}}
    )
    device = build_client_devices(config)[0]
    assert (
        device.accelerator == "cuda" and device.precision == "bf16" and device.device_class == "cpu1-gpu0.25"
    )
    assert device.actor_options()["num_gpus"] == 0.25
    assert gpu_request(config) == ("clients.resources[0].num_gpus", 0.25)
    shipped = load_device_profiles()["edge_gpu"]  # the shipped GPU class: four clients share a card
    assert shipped.ray_actor_options(123 * MB) == {
        "num_cpus": 0.5,
        "resources": {"fedspine_edge_gpu": 0.01},
        "memory": 123 * MB,
        "num_gpus": 0.25,
    }
    on_cpu = config_from_dict({"devices": {"mix": {"jetson_nano": 1.0}}})
    assert gpu_request(on_cpu) is None and "num_gpus" not in build_client_devices(on_cpu)[0].actor_options()
    with pytest.raises(ValueError, match="ray_num_gpus"):
        DeviceProfile("x", 1, 1, 1, 1, ray_num_gpus=-1)


# ---------------------------------------------------------------------------------------------- no GPU here
needs_no_gpu = pytest.mark.skipif(local_gpus()[0] > 0, reason="this machine has a GPU")


@needs_no_gpu
def test_a_gpu_config_fails_before_ray_starts_without_a_gpu():
    config = config_from_dict({"devices": {"mix": {"edge_gpu": 0.5, "agx_orin": 0.5}}})
    with pytest.raises(
        ConfigError, match=r"^devices\.mix: class 'edge_gpu' \(ray_num_gpus\) asks for 0\.25 GPU"
    ):
        check_gpus(config, address=None)
    check_gpus(config, address="auto")  # a cluster's GPUs are checked after connecting, not this machine's
    with pytest.raises(ConfigError, match=r"^server\.num_gpus"):
        check_gpus(config_from_dict({"server": {"backend": "deepspeed", "num_gpus": 1}}), address=None)


@needs_no_gpu
def test_cli_gpu_config_without_a_gpu_is_one_line_exit_2_and_never_imports_ray(tmp_path):
    path = tmp_path / "gpu.yaml"
    path.write_text("clients: {num_clients: 2, resources: [{num_cpus: 0.5, num_gpus: 0.5}]}\n")
    code = (
        "import sys\nfrom fedspine_ray.cli import main\n"
        f"rc = main(['run', {str(path)!r}, '--output-dir', {str(tmp_path / 'run')!r}])\n"
        "print('RAY' if 'ray' in sys.modules else 'NORAY', rc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["NORAY", "2"], done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "clients.resources[0].num_gpus asks for 0.5 GPU" in lines[0], done.stderr


def test_joining_a_cluster_without_gpus_fails_after_connecting_before_any_actor(ray_session):
    from fedspine_ray.launch.ray_session import ensure_ray

    if ray_session.cluster_resources().get("GPU", 0) > 0:
        pytest.skip("the test cluster has GPUs")
    actors_before = len(ray_session.util.list_named_actors(all_namespaces=True))
    with pytest.raises(
        ConfigError, match=r"^devices\.mix: class 'edge_gpu'.*no node of the Ray cluster has any GPU"
    ):
        ensure_ray("auto", {}, gpu_need=("devices.mix: class 'edge_gpu' (ray_num_gpus)", 0.25))
    assert ray_session.is_initialized()  # not started by that call: left running
    assert len(ray_session.util.list_named_actors(all_namespaces=True)) == actors_before


def test_worker_environment_forces_deepspeeds_cpu_accelerator_only_without_gpus():
    from fedspine_ray.launch.ray_session import worker_env

    assert worker_env(gpus=False)["DS_ACCELERATOR"] == "cpu"  # quiet CPU runs, as before
    assert "DS_ACCELERATOR" not in worker_env(gpus=True)  # a GPU-given process decides CUDA itself


# ---------------------------------------------------------------------------------------------- memory
def test_memory_requests_come_from_the_models_size(tiny_llama_dir):
    minilm = config_from_dict({})  # the packaged MiniLM: a client process measured at ~1.0 GiB RSS
    footprint = model_footprint(minilm.model.path)
    assert footprint is not None and footprint.num_params == 22_713_728  # exact, from the safetensors header
    request = client_memory_request(minilm, footprint)
    assert 900 * MB <= request <= 1300 * MB
    assert build_client_devices(minilm)[0].actor_options()["memory"] == request

    tiny = config_from_dict({"model": {"path": str(tiny_llama_dir)}})
    small = client_memory_request(tiny, model_footprint(str(tiny_llama_dir)))
    assert small < request  # a smaller model asks for less ...
    bigger = client_memory_request(
        tiny.with_overrides({"training.batch_size": 64}), model_footprint(str(tiny_llama_dir))
    )
    assert bigger > small  # ... a larger working set for more
    explicit = config_from_dict({"clients": {"resources": [{"num_cpus": 0.5, "memory_mb": 700}]}})
    assert (
        build_client_devices(explicit)[0].actor_options()["memory"] == 700 * MB
    )  # an explicit value is kept


# ---------------------------------------------------------------------------------------------- lazy pools
def test_pool_worker_builds_a_virtual_client_on_its_first_call_over_one_shared_split():
    from fedspine_ray.data.tokens import TokenizedSplit
    from fedspine_ray.runtime.pool import ClientShards, PoolWorker

    n = 40
    split = TokenizedSplit(
        torch.arange(n * 4).reshape(n, 4), torch.ones(n, 4, dtype=torch.long), torch.arange(n)
    )
    shards = ClientShards(split, [np.arange(i, n, 10) for i in range(10)])
    sub, rows = shards.rows_for([3, 7])
    assert len(sub) == 8 and sorted(rows) == [3, 7]
    worker = PoolWorker(sub, rows, threads=1)
    assert worker.ready()["clients"] == 2 and worker.clients == {}  # nothing built up front
    assert worker.call(7, "ready")["num_samples"] == 4 and sorted(worker.clients) == [7]
    batch = worker.client(7).data.batch(np.array([0, 3]))
    assert batch["labels"].tolist() == [7, 37]  # the client's own rows, read from the worker's one split
    torch.testing.assert_close(batch["input_ids"], shards.subset(7).batch(np.array([0, 3]))["input_ids"])
    with pytest.raises(KeyError):
        worker.call(4, "ready")


# ---------------------------------------------------------------------------------------------- on a GPU
def _fit_once(tiny_llama_dir, accelerator: str, precision: str = "fp32", seed: int = 0):
    """One client's fit on the tiny LLaMA: (result, client)."""
    from fedspine_ray.data.tokens import TokenizedSplit
    from fedspine_ray.messages import FitTask
    from fedspine_ray.modeling.adapters import init_factors, lora_target_shapes
    from fedspine_ray.modeling.loading import head_module_names, load_classifier, lora_targets
    from fedspine_ray.runtime.client import FederatedClient
    from fedspine_ray.runtime.transfer import static_tensor_names

    model = load_classifier(tiny_llama_dir, num_labels=2, seed=0)
    targets, heads = lora_targets(model, "auto"), head_module_names(model)
    generator = torch.Generator().manual_seed(seed)
    data = TokenizedSplit(
        torch.randint(5, 500, (32, 16), generator=generator),
        torch.ones(32, 16, dtype=torch.long),
        torch.randint(0, 2, (32,), generator=generator),
    )
    task = FitTask(
        round=1,
        base_key=("v0", 0.0),
        rank=4,
        factors=init_factors(lora_target_shapes(model, targets), 4, seed),
        head={k: v.clone() for k, v in model.state_dict().items() if k.startswith(heads[0])},
        local_steps=3,
        batch_size=8,
        lr=1e-3,
        weight_decay=0.0,
        lora_alpha=8,
        lora_dropout=0.0,
        lora_targets=targets,
        head_modules=heads,
        seed=seed,
        static_names=static_tensor_names(model, heads),
    )
    client = FederatedClient(0, data, 1, accelerator=accelerator, precision=precision)
    return client.fit(task, copy.deepcopy(model)), client


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_gpu_client_trains_on_cuda_and_sends_cpu_tensors(tiny_llama_dir, precision):
    result, client = _fit_once(tiny_llama_dir, "cuda", precision)
    assert result.accelerator == "cuda" and result.gpu_memory_peak_bytes > 0
    tensors = [t for pair in result.factors.values() for t in pair] + list(result.head.values())
    assert all(
        t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors
    )  # what crosses the network
    assert all(torch.isfinite(t).all() for t in tensors) and np.isfinite(result.losses).all()
    assert next(client._base.parameters()).device.type == "cuda"  # the held model stays on the GPU
    state = client.export_state()  # checkpoints cross to a server that may have no GPU
    assert all(p.device.type == "cpu" for p in state["base"].parameters())
    assert all(t.device.type == "cpu" for t in state["static"].values())
    client.import_state(state)
    assert next(client._base.parameters()).device.type == "cuda"
    if precision == "fp32":  # the same seed on the CPU: the same update within GPU float tolerance
        reference, _ = _fit_once(tiny_llama_dir, "cpu")
        for name, (a, b) in reference.factors.items():
            torch.testing.assert_close(result.factors[name][0], a, rtol=1e-3, atol=1e-4)
            torch.testing.assert_close(result.factors[name][1], b, rtol=1e-3, atol=1e-4)
        assert result.losses == pytest.approx(reference.losses, rel=1e-3)


@needs_cuda
def test_deepspeed_server_given_a_gpu_runs_on_cuda_even_with_a_forced_cpu_accelerator(monkeypatch):
    pytest.importorskip("deepspeed")
    from fedspine_ray.modeling.backend import DeepSpeedBackend

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # what the launcher used to force into every worker
    config = config_from_dict({"server": {"backend": "deepspeed", "num_gpus": 1}}).server
    assert DeepSpeedBackend(config).accelerator == "cuda"
