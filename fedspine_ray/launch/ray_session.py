"""Starting or joining Ray from the launching process: one place for what every worker's environment holds.

Ray itself is imported inside :func:`ensure_ray`, so a launcher that fails on a bad config (before calling
it) never imports Ray (``tests/test_config_errors.py`` checks this through the real CLI).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from fedspine_ray.config import DevicesConfig
from fedspine_ray.devices.profiles import load_device_profiles

#: Environment every Ray worker gets: no hub access, no tokenizer thread pools fighting for 2 cores.
#: MALLOC_ARENA_MAX keeps glibc from growing one arena per thread in each of many actor processes.
WORKER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MALLOC_ARENA_MAX": "2",
    # One line per actor otherwise: transformers' LOAD REPORT / warnings and DeepSpeed's accelerator guess.
    "TRANSFORMERS_VERBOSITY": "error",
    "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
    # PEFT 0.18 asks transformers 5 a deprecated question on every LoRA wrap: one warning per worker.
    "PYTHONWARNINGS": "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning",
    # transformers 5 draws a "Loading weights" bar for every from_pretrained: one per actor, forwarded.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


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


def ensure_ray(address: str | None, resources: Mapping[str, float], quiet: bool = False) -> bool:
    """Connect to (``address``) or start a local Ray declaring ``resources``; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.update(WORKER_ENV)
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": not quiet,
        "runtime_env": {"env_vars": WORKER_ENV},
    }
    if address is None:
        kwargs["resources"] = dict(resources)
        # A new local cluster turns on token authentication (Ray's default) and warns that it did, on every
        # start: keep the protection, drop the notice (errors from that module still show).
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(address=address if address is not None else "local", **kwargs)  # never a stray `ray start`
    return True
