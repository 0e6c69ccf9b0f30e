"""A run directory's checkpoint files, read and written without importing torch.

The launching process (:mod:`fedspine_ray.runner`) only moves checkpoint *bytes*: the server actor encodes
its state (:func:`fedspine_ray.runtime.checkpoint.encode_checkpoint`) and decodes it on resume, so the launcher
stays a small process that never loads torch. What the state holds: :mod:`fedspine_ray.runtime.checkpoint`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedspine_ray.config import ConfigError, ExperimentConfig, load_config
from fedspine_ray.launch.files import atomic_write
from fedspine_ray.launch.results import CONFIG_FILE

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_INFO_FILE = "checkpoint.json"


class CheckpointError(RuntimeError):
    """A run directory has no usable checkpoint; the message names the file and the fix."""


def checkpoint_bytes(run_dir: str | Path) -> bytes:
    """The raw checkpoint file; the launching process ships these bytes to the server actor, which decodes
    them itself (Ray would hand it read-only NumPy arrays, e.g. the bandits' statistics, otherwise)."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no checkpoint to resume from; fix: run with runtime.checkpoint_every >= 1 (e.g. --set "
            "runtime.checkpoint_every=1) so a run writes one, and pass the run's output directory"
        )
    return path.read_bytes()


def write_checkpoint_file(run_dir: str | Path, data: bytes, info: dict[str, Any]) -> Path:
    """Write encoded checkpoint ``data`` to ``run_dir/checkpoint.pt`` and ``info`` (with the file's size) to
    checkpoint.json, each atomically: a crash while writing leaves the previous checkpoint intact."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CHECKPOINT_FILE
    atomic_write(path, lambda tmp: tmp.write_bytes(data), durable=True)
    info = {**info, "bytes": path.stat().st_size}
    atomic_write(run_dir / CHECKPOINT_INFO_FILE, lambda tmp: tmp.write_text(json.dumps(info)), durable=True)
    return path


def checkpoint_round(run_dir: str | Path) -> int | None:
    """The round the checkpoint in ``run_dir`` holds (from checkpoint.json), or None without one."""
    path = Path(run_dir) / CHECKPOINT_INFO_FILE
    if not path.is_file() or not (Path(run_dir) / CHECKPOINT_FILE).is_file():
        return None
    return int(json.loads(path.read_text())["round"])


def resume_config(
    run_dir: str | Path, config_path: str | None, overrides: dict[str, Any]
) -> ExperimentConfig:
    """The config of the run in ``run_dir`` (its config.yaml, ``overrides`` applied, output_dir = run_dir).

    Raises :class:`ConfigError` (the CLI exits 2 before Ray starts) when there is nothing to resume.
    ``--set`` overrides are applied, but anything besides ``runtime.*`` makes the continuation differ
    from the run that was interrupted.
    """
    run_dir = Path(run_dir)
    if config_path is not None:
        raise ConfigError(
            f"--resume: the config comes from {run_dir / CONFIG_FILE}; fix: drop the CONFIG argument "
            "(use --set to change runtime settings)"
        )
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"--resume: {run_dir} holds no {CONFIG_FILE}; fix: pass a run's output directory")
    if not (run_dir / CHECKPOINT_FILE).is_file():
        raise ConfigError(
            f"--resume: {run_dir} holds no {CHECKPOINT_FILE}; fix: run with --set runtime.checkpoint_every=1 "
            "(or N) so runs write checkpoints"
        )
    return load_config(run_dir / CONFIG_FILE, {**overrides, "output_dir": str(run_dir)})
