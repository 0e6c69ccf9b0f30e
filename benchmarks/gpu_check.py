"""GPU measurements of issue 24 in one time-boxed run (benchmarks/gpu_check.sh starts it on the GPU machine).

Phases, each bounded so the whole fits one device call (``--deadline``), results written to ``OUT/gpu_check.json``
after every phase (a phase cut short still leaves the others):

1. ``env``: GPU, driver, torch / transformers / PEFT / Ray / DeepSpeed versions.
2. ``cuda_tests``: tests/test_gpu_config.py's CUDA tests (clients train on CUDA in fp32 / bf16 / fp16, send CPU
   tensors, checkpoint state crosses to the CPU; a GPU-given DeepSpeed server runs on CUDA although
   ``DS_ACCELERATOR=cpu`` is set).
3. ``fedspine_gpu`` and ``fedspine_cpu``: ``fedspine run`` of the shipped SmolLM2 FedSpine config with 8 clients,
   dedicated, each asking for one CPU and (GPU run) an eighth of the GPU in bf16, against the same 8 clients on
   CPU cores. SmolLM2-135M's exact architecture and tokenizer with random weights (the 93 MB GGUF does not fit the
   64 MiB a device call carries; FLOPs and memory are the same, accuracy is meaningless), Rotten Tomatoes from
   CSV files. Reported: rounds per minute (rounds >= 1, round wall times from rounds.parquet), the clients'
   fit and training seconds, GPU memory per client (``gpu_memory_peak_bytes``: torch's peak in the client's
   process; and nvidia-smi's per-process memory, CUDA context included, sampled every 2 s).
4. ``zero_ranks``: ``server.num_ranks: 2`` on the one GPU (0.5 GPU per rank actor, NCCL): ZeRO-3 partitions of
   SmolLM2 as a classifier, evaluation and Taylor importance against the plain torch server, peak GPU memory
   per rank. NCCL may refuse two ranks on one device; the error is then recorded.

Usage: python3 benchmarks/gpu_check.py --out DIR [--deadline EPOCH_S] (see gpu_check.sh for the environment).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / ".gpu_assets"
MODEL_DIR = Path("/tmp/smollm2-random")
RESULTS: dict[str, Any] = {}
#: Seconds each phase may take at most (less when the deadline is nearer).
CAPS = {"cuda_tests": 100, "fedspine_gpu": 170, "fedspine_cpu": 170, "zero_ranks": 60}


def save(out: Path) -> None:
    (out / "gpu_check.json").write_text(json.dumps(RESULTS, indent=2, default=str))


def remaining(deadline: float, cap: float) -> float:
    return max(0.0, min(cap, deadline - time.time() - 10))


def env_phase() -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    info: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    for name in ("torch", "transformers", "peft", "ray", "deepspeed", "pandas", "pyarrow", "numpy"):
        try:
            info[name] = md.version(name)
        except md.PackageNotFoundError:
            info[name] = "missing"
    info["cuda"] = torch.version.cuda
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30 if info["gpu"] else 0
    info["bf16"] = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return info


def run_subprocess(args: list[str], timeout: float, log: Path) -> dict[str, Any]:
    """Run ``args`` in its own process group, killed at ``timeout``; its output appended to ``log``."""
    start = time.time()
    with log.open("a") as out:
        out.write(f"\n===== {' '.join(args)} (timeout {timeout:.0f}s)\n")
        out.flush()
        proc = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = "timeout"
    return {"exit": code, "seconds": round(time.time() - start, 1)}


def cuda_tests(timeout: float, log: Path) -> dict[str, Any]:
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu_config.py"]
    args += ["-k", "gpu_client_trains or given_a_gpu", "-rA"]
    result = run_subprocess(args, timeout, log)
    tail = log.read_text().splitlines()[-40:]
    result["summary"] = [
        line
        for line in tail
        if " passed" in line or " failed" in line or "PASSED" in line or "FAILED" in line or "Error" in line
    ]
    return result


def make_model() -> None:
    """SmolLM2-135M's architecture with random weights (seed 0) and its real tokenizer, saved once."""
    if (MODEL_DIR / "model.safetensors").exists():
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(ASSETS / "smollm2")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(MODEL_DIR)
    for file in (ASSETS / "smollm2").iterdir():
        if file.name != "config.json":
            shutil.copy(file, MODEL_DIR / file.name)


class GpuSampler(threading.Thread):
    """Per-process GPU memory (MiB) from nvidia-smi every ``interval`` s: the most any process and all held."""

    def __init__(self, interval: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.interval, self.stop = interval, threading.Event()
        self.max_process_mib = self.max_total_mib = 0.0
        self.processes = 0

    def run(self) -> None:
        query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
        while not self.stop.is_set():
            try:
                lines = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.splitlines()
                used = [float(line.split(",")[1]) for line in lines if "," in line]
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                used = []
            if used:
                self.max_process_mib = max(self.max_process_mib, max(used))
                self.max_total_mib = max(self.max_total_mib, sum(used))
                self.processes = max(self.processes, len(used))
            self.stop.wait(self.interval)


def fedspine_run(kind: str, timeout: float, out: Path, log: Path) -> dict[str, Any]:
    """``fedspine run`` of the SmolLM2 FedSpine config, 8 dedicated clients on the GPU or on CPU cores."""
    import yaml

    from fedspine_ray.config import load_config, shipped_config_path

    gpu = kind == "gpu"
    work = Path(f"/tmp/gpu_check_{kind}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    share = {"ray_num_cpus": 1.0, **({"ray_num_gpus": 0.125} if gpu else {})}
    (work / "profiles.yaml").write_text(
        yaml.safe_dump({c: share for c in ("jetson_tx2", "xavier_nx", "agx_orin")})
    )
    config = load_config(
        shipped_config_path("fedspine-smollm2.yaml"),
        {
            "name": f"smollm2-{kind}",
            "output_dir": str(work / "run"),
            "model.path": str(MODEL_DIR),
            "data.source": "files",
            "data.train_path": str(ASSETS / "rotten_train.csv"),
            "data.test_path": str(ASSETS / "rotten_test.csv"),
            "clients.placement": "dedicated",
            "clients.precision": "bf16" if gpu else "fp32",
            "devices.profiles_path": str(work / "profiles.yaml"),
            "training.rounds": 3,
        },
    )
    (work / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
    sampler = GpuSampler()
    sampler.start()
    try:
        args = [sys.executable, "-m", "fedspine_ray.cli", "run", str(work / "config.yaml"), "--quiet"]
        result = run_subprocess(args, timeout, log)
    finally:
        sampler.stop.set()
        sampler.join()
    result.update(summarise_run(work / "run", out, kind))
    if gpu:
        result["nvidia_smi_max_process_mib"] = sampler.max_process_mib
        result["nvidia_smi_max_total_mib"] = sampler.max_total_mib
        result["nvidia_smi_processes"] = sampler.processes
    return result


def summarise_run(run_dir: Path, out: Path, kind: str) -> dict[str, Any]:
    import pandas as pd

    rounds_file, clients_file = run_dir / "rounds.parquet", run_dir / "clients.parquet"
    if not rounds_file.exists():
        return {"rounds_done": 0}
    shutil.copy(rounds_file, out / f"{kind}_rounds.parquet")
    rounds = pd.read_parquet(rounds_file)
    done = rounds[rounds["round"] >= 1]
    result: dict[str, Any] = {
        "rounds_done": len(done),
        "setup_and_round0_s": float(rounds["wall_time_s"].iloc[0]),
        "round_wall_s": [round(float(x), 2) for x in done["round_wall_time_s"]],
        "rounds_per_minute": 60.0 * len(done) / float(done["round_wall_time_s"].sum()) if len(done) else None,
        "accuracy": [round(float(x), 4) for x in rounds["test_accuracy"]],
        "sparsity": [round(float(x), 4) for x in rounds.get("sparsity", pd.Series(dtype=float))],
    }
    for col in ("wait_s", "eval_s", "aggregate_s", "server_configure_s", "dispatch_s"):
        if col in done:
            result[f"mean_{col}"] = round(float(done[col].mean()), 2)
    if clients_file.exists():
        shutil.copy(clients_file, out / f"{kind}_clients.parquet")
        clients = pd.read_parquet(clients_file)
        ok = clients[clients["status"] == "ok"]
        result["statuses"] = clients["status"].value_counts().to_dict()
        result["accelerators"] = sorted(set(ok.get("accelerator", pd.Series(dtype=str))))
        result["mean_client_fit_s"] = round(float(ok["wall_time_s"].mean()), 3) if len(ok) else None
        if "gpu_memory_peak_bytes" in ok and len(ok):
            per_client = ok.groupby("client_id")["gpu_memory_peak_bytes"].max() / 2**20
            result["gpu_memory_peak_mib_per_client"] = {
                "max": round(float(per_client.max()), 1),
                "mean": round(float(per_client.mean()), 1),
            }
        result["pruning_ratios"] = sorted(set(float(x) for x in ok["pruning_ratio"]))
    return result


ZERO_CODE = r"""
import json, sys, time, copy, torch, ray
from fedspine_ray.config import config_from_dict
from fedspine_ray.modeling.backend import TorchBackend
from fedspine_ray.modeling.loading import load_classifier
from fedspine_ray.runtime.zero import server_backend
ray.init(num_gpus=1, include_dashboard=False, log_to_driver=False)
result = {}
model = load_classifier(sys.argv[1], num_labels=2, seed=0)
server = config_from_dict({"server": {"backend": "deepspeed", "zero_stage": 3, "num_ranks": 2, "num_gpus": 0.5}}).server
start = time.time()
group = server_backend(server, "gpu-check")
result["members"] = group.members
result["group_start_s"] = round(time.time() - start, 1)
parts = group.partitions(copy.deepcopy(model))
result["params_per_rank"] = [p[0] for p in parts]
result["params_total"] = parts[0][1]
g = torch.Generator().manual_seed(0)
data = [{"input_ids": torch.randint(5, 40000, (16, 64), generator=g), "attention_mask": torch.ones(16, 64, dtype=torch.long),
         "labels": torch.randint(0, 2, (16,), generator=g)} for _ in range(4)]
def evaluate(backend, m):
    out = []
    with backend.serving(m) as forward, torch.no_grad():
        for batch in data:
            out.append(forward(**batch).logits.float().cpu())
    return torch.cat(out)
t = time.time(); ref = evaluate(TorchBackend(), copy.deepcopy(model)); result["torch_cpu_eval_s"] = round(time.time() - t, 2)
t = time.time(); got = evaluate(group, copy.deepcopy(model)); result["zero2_gpu_eval_s"] = round(time.time() - t, 2)
result["eval_max_abs_diff"] = float((got - ref).abs().max())
t = time.time(); ref_imp = TorchBackend().importance(model, "taylor", data[:2]); result["torch_cpu_importance_s"] = round(time.time() - t, 2)
t = time.time(); imp = group.importance(model, "taylor", data[:2]); result["zero2_gpu_importance_s"] = round(time.time() - t, 2)
diffs = [float(((imp.mlp[k] - v).abs() / v.abs().clamp_min(1e-12)).max()) for k, v in ref_imp.mlp.items()]
result["importance_max_rel_diff"] = max(diffs)
result["peak_gpu_mib_per_rank"] = [round(m / 2**20, 1) for m in ray.get([r.peak_gpu_memory.remote() for r in group.ranks])]
group.close()
print("ZERO_RESULT " + json.dumps(result))
"""


def zero_ranks(timeout: float, log: Path) -> dict[str, Any]:
    code_file = Path("/tmp/gpu_check_zero.py")
    code_file.write_text(ZERO_CODE)
    result = run_subprocess([sys.executable, str(code_file), str(MODEL_DIR)], timeout, log)
    for line in log.read_text().splitlines()[::-1]:
        if line.startswith("ZERO_RESULT "):
            result.update(json.loads(line[len("ZERO_RESULT ") :]))
            break
    else:
        result["error_tail"] = [
            line for line in log.read_text().splitlines()[-60:] if "Error" in line or "NCCL" in line
        ][-8:]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--deadline", type=float, default=time.time() + 540)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "gpu_check.log"
    RESULTS["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
    phases = [
        ("env", lambda: env_phase()),
        ("cuda_tests", lambda: cuda_tests(remaining(args.deadline, CAPS["cuda_tests"]), log)),
        ("model", lambda: make_model() or {"dir": str(MODEL_DIR)}),
        (
            "fedspine_gpu",
            lambda: fedspine_run("gpu", remaining(args.deadline, CAPS["fedspine_gpu"]), args.out, log),
        ),
        (
            "fedspine_cpu",
            lambda: fedspine_run("cpu", remaining(args.deadline, CAPS["fedspine_cpu"]), args.out, log),
        ),
        ("zero_ranks", lambda: zero_ranks(remaining(args.deadline, CAPS["zero_ranks"]), log)),
    ]
    for name, phase in phases:
        if name not in ("env", "model") and remaining(args.deadline, 1e9) < 20:
            RESULTS[name] = {"skipped": "deadline"}
            continue
        start = time.time()
        try:
            RESULTS[name] = phase()
        except Exception as exc:  # record and go on: every phase's result is worth bringing back
            RESULTS[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
        RESULTS.setdefault("phase_seconds", {})[name] = round(time.time() - start, 1)
        save(args.out)
        print(f"[gpu_check] {name}: {json.dumps(RESULTS[name], default=str)[:600]}", flush=True)
    gpu, cpu = RESULTS.get("fedspine_gpu", {}), RESULTS.get("fedspine_cpu", {})
    if gpu.get("rounds_per_minute") and cpu.get("rounds_per_minute"):
        RESULTS["gpu_over_cpu_rounds_per_minute"] = round(
            gpu["rounds_per_minute"] / cpu["rounds_per_minute"], 2
        )
    save(args.out)
    print(json.dumps(RESULTS, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
