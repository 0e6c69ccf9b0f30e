"""Which device each client plays and what Ray resources its process asks for (no torch).

With ``devices.mix`` set, clients are drawn from the shipped (or user) device profiles; without a mix,
clients take ``clients.resources`` in turn. Torch-free, so the launching process (sweep placement groups)
can size a run's resources without loading models: the model's size is read from its files' headers
(:func:`model_footprint`), the same way in the launcher and in the server, so a sweep's placement-group
bundles and the actors the server creates always ask for the same amounts.

Memory requests (:func:`client_memory_request`) come from what a client process really holds: the Python
runtime with torch/transformers/PEFT imported, the model it holds plus one arriving, the training working
set (activations, LM logits, adapter gradients and optimizer state) and its data shard. Constants of a
few hundred MB let Ray put ten 1.2 GiB MiniLM clients on a node that holds four.
"""

from __future__ import annotations

import functools
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedspine_ray.config import ExperimentConfig
from fedspine_ray.devices.cost import estimate_training_memory
from fedspine_ray.devices.profiles import DeviceProfile, assign_devices, load_device_profiles
from fedspine_ray.modeling.paths import locate_model_file

MB = 1024 * 1024
#: Resident memory of a client process before it holds a model: Python with Ray, torch, transformers, PEFT and
#: runtime/client.py imported (474 MiB RSS measured on this box, torch 2.13 CPU, transformers 5.24).
PROCESS_RUNTIME_BYTES = 480 * MB
#: Real autograd keeps about 3x the textbook activation count of :func:`estimate_training_memory` (attention
#: reshapes, dropout masks, GELU inputs, the allocator's slack): a MiniLM LoRA step at batch 16 x seq 48 peaked
#: 370 MiB above its two model copies where the formula gives 125 MiB. Requests scale the working set by it.
WORKING_SET_FACTOR = 3.0
#: Request used when the model's files cannot be sized (an unusual format): a MiniLM client's measured RSS.
FALLBACK_MEMORY_BYTES = 1200 * MB
#: Bytes per element of the dtypes a checkpoint may be stored in (to size ``.bin`` files by their length).
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class ModelFootprint:
    """What sizes a client's memory: parameter count (held in fp32 by clients) and the shapes the
    activation estimate needs, read from the model's files without loading it."""

    num_params: int
    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_heads: int
    vocab_size: int

    @property
    def fp32_bytes(self) -> int:
        return 4 * self.num_params


@dataclass(frozen=True)
class ClientDevice:
    """The device a client actor simulates and the Ray resources the actor requests."""

    client_id: int
    device_class: str
    num_cpus: float
    memory_bytes: int
    torch_threads: int
    ray_resource: str | None = None
    profile: DeviceProfile | None = None
    #: GPUs the client's process asks for (fractions share one); > 0: it trains on CUDA.
    num_gpus: float = 0.0
    #: ``clients.precision``: the number format of training on a GPU.
    precision: str = "fp32"

    @property
    def accelerator(self) -> str:
        """``cuda`` when the client's process is given a GPU, else ``cpu``."""
        return "cuda" if self.num_gpus > 0 else "cpu"

    def actor_options(self) -> dict[str, Any]:
        """Ray options of this client's actor: CPUs, memory, GPUs and, for a device class, its custom
        resource."""
        if self.profile is not None:
            return self.profile.ray_actor_options(self.memory_bytes)
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "memory": self.memory_bytes}
        if self.num_gpus > 0:
            options["num_gpus"] = self.num_gpus
        return options


def _profiles(config: ExperimentConfig) -> dict[str, DeviceProfile]:
    """The device classes of this run (checked before Ray started: launch/preflight.check_devices)."""
    return load_device_profiles(config.devices.profiles_path)


def build_client_devices(config: ExperimentConfig) -> list[ClientDevice]:
    """One :class:`ClientDevice` per client, deterministic in the config and seed (and the model's files)."""
    n = config.clients.num_clients
    precision = config.clients.precision
    derived: int | None = None

    def memory() -> int:
        nonlocal derived
        if derived is None:
            derived = client_memory_request(config, model_footprint(config.model.path))
        return derived

    if config.devices.mix:
        profiles = _profiles(config)
        classes = assign_devices(config.devices.mix, n, config.seed)
        devices = []
        for cid, name in enumerate(classes):
            profile = profiles[name]
            requested = profile.ray_memory_bytes
            devices.append(
                ClientDevice(
                    client_id=cid,
                    device_class=name,
                    num_cpus=profile.ray_num_cpus,
                    memory_bytes=int(requested) if requested is not None else memory(),
                    torch_threads=max(1, math.floor(profile.ray_num_cpus)),
                    ray_resource=profile.ray_resource,
                    profile=profile,
                    num_gpus=profile.ray_num_gpus,
                    precision=precision,
                )
            )
        return devices
    specs = config.clients.resources
    devices = []
    for cid in range(n):
        spec = specs[cid % len(specs)]
        devices.append(
            ClientDevice(
                client_id=cid,
                device_class=spec.device_class(),
                num_cpus=spec.num_cpus,
                memory_bytes=spec.memory_mb * MB if spec.memory_mb is not None else memory(),
                torch_threads=max(1, math.floor(spec.num_cpus)),
                num_gpus=spec.num_gpus,
                precision=precision,
            )
        )
    return devices


def gpus_requested(config: ExperimentConfig) -> float:
    """The largest GPU request of one client process of this run (0.0: the clients run on CPUs).

    Reads only the profiles of the classes in ``devices.mix`` (or ``clients.resources``), so it needs no
    model files: the launcher asks it before Ray starts (launch/preflight.check_gpus).
    """
    if config.devices.mix:
        profiles = _profiles(config)
        return max(
            (profiles[name].ray_num_gpus for name in config.devices.mix if name in profiles), default=0.0
        )
    return max((spec.num_gpus for spec in config.clients.resources), default=0.0)


def client_memory_request(config: ExperimentConfig, footprint: ModelFootprint | None) -> int:
    """Ray ``memory`` for one client process of this run, from what it holds (module docstring).

    ``runtime + 2 x model (held + arriving, fp32) + 3 x training working set + data shard``, the working
    set by the same formula the simulated devices are charged with (devices/cost.estimate_training_memory:
    adapter gradients and AdamW state at the largest rank, activations at ``batch_size x max_seq_len``)
    plus a causal LM's vocabulary logits, scaled by :data:`WORKING_SET_FACTOR` (measured). A pool worker asks the same amount: its clients share one copy
    of every base they hold (runtime/client.ProcessModels), so it holds about what one client does plus
    the other clients' data shards and any private (derived) sub-models.
    """
    if footprint is None:
        return FALLBACK_MEMORY_BYTES
    training = config.training
    seq = config.model.max_seq_len
    rank = max([config.lora.rank, *config.bandit.ranks])
    h, inter, layers = footprint.hidden_size, footprint.intermediate_size, footprint.num_layers
    # LoRA on every Linear of a block: rank x (in + out) summed, about 9h + 3i for a LLaMA block (q, k, v, o,
    # gate, up, down) and less for BERT's four attention and two MLP Linears: an upper bound for both.
    trainable = rank * layers * (9 * h + 3 * inter)
    logits = (
        3 * training.batch_size * seq * footprint.vocab_size * 4 if config.task.kind == "causal_lm" else 0
    )
    working = estimate_training_memory(
        num_params=0,
        trainable_params=trainable,
        batch_size=training.batch_size,
        seq_len=seq,
        hidden_size=h,
        num_layers=layers,
        intermediate_size=inter,
        num_heads=max(1, footprint.num_heads),
        overhead_bytes=logits,
    )
    samples = config.data.max_train_samples or 50_000
    shard = math.ceil(samples / config.clients.num_clients) * seq * 2 * 8 + samples // 1000
    total = PROCESS_RUNTIME_BYTES + 2 * footprint.fp32_bytes + WORKING_SET_FACTOR * working + shard
    return int(math.ceil(total / MB) * MB)


def model_footprint(spec: str) -> ModelFootprint | None:
    """The footprint of ``model.path`` read from file headers (no torch); None if it cannot be sized.

    A Hugging Face directory: ``config.json`` for the shapes, the safetensors headers for the exact
    parameter count (``.bin`` checkpoints: file size / dtype size). A GGUF file: its metadata and tensor
    table (the ``gguf`` package's reader; the file is memory-mapped, not read).
    """
    try:
        path = locate_model_file(spec)
        stamp = path.stat().st_mtime_ns
    except OSError:
        return None
    return _footprint(str(path), stamp)


@functools.lru_cache(maxsize=16)
def _footprint(path_text: str, stamp: int) -> ModelFootprint | None:
    path = Path(path_text)
    try:
        if path.suffix.lower() == ".gguf":
            return _gguf_footprint(path)
        return _hf_footprint(path)
    except (OSError, ValueError, KeyError, struct.error, ImportError):
        return None


def _hf_footprint(path: Path) -> ModelFootprint | None:
    config = json.loads((path / "config.json").read_text())
    config = config.get("text_config", config) if "hidden_size" not in config else config
    params = 0
    for file in sorted(path.glob("*.safetensors")):
        with file.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        params += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    if not params:
        element = _DTYPE_BYTES.get(str(config.get("torch_dtype") or config.get("dtype") or "float32"), 4)
        params = sum(f.stat().st_size for f in path.glob("*.bin")) // element
    if not params:
        return None
    hidden = int(config["hidden_size"])
    return ModelFootprint(
        num_params=int(params),
        hidden_size=hidden,
        num_layers=int(config["num_hidden_layers"]),
        intermediate_size=int(config.get("intermediate_size") or 4 * hidden),
        num_heads=int(config.get("num_attention_heads") or max(1, hidden // 64)),
        vocab_size=int(config.get("vocab_size") or 0),
    )


def _gguf_footprint(path: Path) -> ModelFootprint:
    import gguf  # torch-free (numpy); read lazily: a GGUF model is the exception

    reader = gguf.GGUFReader(path)
    arch = str(reader.fields["general.architecture"].contents())

    def field(key: str, default: int = 0) -> int:
        found = reader.fields.get(f"{arch}.{key}")
        return int(found.contents()) if found is not None else default

    hidden = field("embedding_length")
    return ModelFootprint(
        num_params=sum(int(t.n_elements) for t in reader.tensors),
        hidden_size=hidden,
        num_layers=field("block_count"),
        intermediate_size=field("feed_forward_length", 4 * hidden),
        num_heads=field("attention.head_count", max(1, hidden // 64)),
        vocab_size=field("vocab_size"),
    )
