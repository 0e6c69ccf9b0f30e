"""Starting or joining Ray from the launching process: one place for what every worker's environment holds.

Ray itself is imported inside :func:`ensure_ray`, so a launcher that fails on a bad config (before calling
it) never imports Ray (``tests/test_config_errors.py`` checks this through the real CLI). A run that asks for
GPUs and joins a cluster (``--address``) is checked against the cluster's GPUs right after connecting,
before any actor exists (an embedded local Ray is checked before it starts: launch/preflight.check_gpus).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from fedspine_ray.config import ConfigError, DevicesConfig, ServerConfig
from fedspine_ray.devices.profiles import load_device_profiles

#: Environment every Ray worker gets: no hub access, no tokenizer thread pools fighting for 2 cores.
#: MALLOC_ARENA_MAX keeps glibc from growing one arena per thread in each of many actor processes.
WORKER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MALLOC_ARENA_MAX": "2",
    # One line per actor otherwise: transformers' LOAD REPORT / warnings.
    "TRANSFORMERS_VERBOSITY": "error",
    # PEFT 0.18 asks transformers 5 a deprecated question on every LoRA wrap: one warning per worker.
    "PYTHONWARNINGS": "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning",
    # transformers 5 draws a "Loading weights" bar for every from_pretrained: one per actor, forwarded.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


#: Added to :data:`WORKER_ENV` only for runs that ask for no GPU: DeepSpeed, imported in the server and by
#: library integrations elsewhere, logs its accelerator guess in every actor without it. A run with GPUs never
#: gets it: the process that runs DeepSpeed decides CUDA or CPU itself (modeling/backend.py), and a value forced
#: here would make a server Ray gave a GPU run DeepSpeed on its CPU accelerator.
CPU_ONLY_ENV = {"DS_ACCELERATOR": "cpu"}


def worker_env(gpus: bool) -> dict[str, str]:
    """The environment of every Ray worker of a run (``gpus``: whether any of its processes asks for one)."""
    return dict(WORKER_ENV) if gpus else {**WORKER_ENV, **CPU_ONLY_ENV}


def local_custom_resources(devices: Iterable[DevicesConfig]) -> dict[str, float]:
    """Custom resources an embedded local Ray declares so device-pinned actors can be placed on it.

    One large amount per device class in any of the ``devices`` sections' mixes (a sweep passes every
    trial's); on a ``ray up`` cluster the node types declare them instead (see clusters/).
    """
    resources: dict[str, float] = {}
    for section in devices:
        if section.mix:
            profiles = load_device_profiles(section.profiles_path)
            resources.update({profiles[name].ray_resource: 1000.0 for name in section.mix})
    return resources


def ensure_ray(
    address: str | None,
    resources: Mapping[str, float],
    quiet: bool = False,
    gpu_need: tuple[str, float] | None = None,
) -> bool:
    """Connect to (``address``) or start a local Ray declaring ``resources``; True when this call started it.

    ``gpu_need`` (``launch/preflight.gpu_request``: the field asking one process for the most GPUs, and how
    many) is checked against the cluster right after connecting: no node with that many GPUs fails with one
    line (:class:`ConfigError`) before the run creates any actor.
    """
    import ray

    started = False
    if not ray.is_initialized():
        env = worker_env(gpus=gpu_need is not None)
        os.environ.update(env)
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": logging.WARNING,
            "log_to_driver": not quiet,
            "runtime_env": {"env_vars": env},
        }
        if address is None:
            kwargs["resources"] = dict(resources)
            # A new local cluster turns on token authentication (Ray's default) and warns that it did, on every
            # start: keep the protection, drop the notice (errors from that module still show).
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
                logging.ERROR
            )
        ray.init(address=address if address is not None else "local", **kwargs)  # never a stray `ray start`
        started = True
    if gpu_need is not None:
        field_name, amount = gpu_need
        most = max(
            (n.get("Resources", {}).get("GPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0
        )
        if most + 1e-9 < amount:
            if started:
                ray.shutdown()
            raise ConfigError(
                f"{field_name} asks for {amount:g} GPU per process, but no node of the Ray cluster has "
                f"{'any GPU' if most == 0 else f'more than {most:g}'}; fix: add GPU nodes (clusters/), or ask "
                "for 0 GPUs"
            )
    return started


def server_placement(server: ServerConfig) -> dict[str, Any]:
    """Ray options of the server actor besides ``num_cpus=0``: its GPUs and the node it runs on.

    GPUs: ``server.num_gpus`` for a one-rank ZeRO server; with ``server.num_ranks`` > 1 the rank actors ask for
    them (fedspine_ray/runtime/zero.py) and the server for none. Node: the server holds the run's state and
    the object-store copies of the models it ships, so it goes on the head node (``node:__internal_head__``),
    which a cluster keeps while worker nodes come and go. Not when it asks for a GPU (the head may have
    none: Ray places it), and not inside a placement group (a Tune trial's, which must hold it).
    """
    import ray

    gpus = server.num_gpus if server.num_ranks == 1 else 0.0
    options: dict[str, Any] = {"num_gpus": gpus}
    if gpus == 0 and ray.util.get_current_placement_group() is None:
        options["resources"] = {"node:__internal_head__": 0.001}
    return options
