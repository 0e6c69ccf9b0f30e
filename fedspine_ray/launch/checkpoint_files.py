"""A run directory's checkpoint files, read and written without importing torch.

The launching process (:mod:`fedspine_ray.runner`) only moves checkpoint *bytes*: the server actor encodes
its state (:func:`fedspine_ray.runtime.checkpoint.encode_checkpoint`) and decodes it on resume, so the launcher
stays a small process that never loads torch. What the state holds: :mod:`fedspine_ray.runtime.checkpoint`.

A checkpoint is checked here before Ray starts (:func:`validate_checkpoint`), also without torch: it is the
zip archive ``torch.save`` writes, its entries' CRCs match, and its size is the one checkpoint.json recorded
when it was written. A truncated or overwritten file is then one line naming the file, not an unpickling
traceback from inside the server actor.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from fedspine_ray.config import ConfigError, ExperimentConfig, load_config
from fedspine_ray.launch.files import atomic_write
from fedspine_ray.launch.results import CLIENTS_FILE, CONFIG_FILE, ROUNDS_FILE

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_INFO_FILE = "checkpoint.json"
#: What continuing a run needs from its directory: the checkpoint, its facts, and the rows up to it (a Tune
#: checkpoint of a sweep trial holds exactly these, launch/tune.py).
RUN_STATE_FILES = (CHECKPOINT_FILE, CHECKPOINT_INFO_FILE, ROUNDS_FILE, CLIENTS_FILE, CONFIG_FILE)
#: Entries every ``torch.save`` archive has (under its one top-level folder).
_TORCH_ENTRIES = ("data.pkl", "version")


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
    validate_checkpoint(run_dir)
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


def validate_checkpoint(run_dir: str | Path) -> int:
    """Check ``run_dir``'s checkpoint without loading it; the round it holds. Raises :class:`ConfigError`.

    Torch-free, so ``fedspine run --resume`` fails before Ray starts: checkpoint.json must be readable JSON
    with the round and the file's size, checkpoint.pt that size, a zip archive with ``torch.save``'s entries
    whose CRCs match (reads the file once; a second per 100s of MB).
    """
    run_dir = Path(run_dir)
    path, info_path = run_dir / CHECKPOINT_FILE, run_dir / CHECKPOINT_INFO_FILE
    fix = "fix: resume from a run directory whose last checkpoint is intact, or start the run again"
    try:
        info = json.loads(info_path.read_text())
        round_, size = int(info["round"]), int(info["bytes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"--resume: {info_path} is missing or unreadable ({type(exc).__name__}: {exc}); {fix}"
        ) from None
    actual = path.stat().st_size if path.is_file() else -1
    if actual != size:
        raise ConfigError(
            f"--resume: {path} has {actual} bytes but {CHECKPOINT_INFO_FILE} recorded {size}: the checkpoint "
            f"was truncated or replaced; {fix}"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            missing = [e for e in _TORCH_ENTRIES if not any(n.split("/", 1)[-1] == e for n in names)]
            broken = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError(f"--resume: {path} is not a checkpoint archive ({exc}); {fix}") from None
    if missing or broken:
        what = f"lacks the entries {missing}" if missing else f"has a corrupt entry {broken!r}"
        raise ConfigError(f"--resume: {path} {what}; {fix}")
    return round_


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
    validate_checkpoint(run_dir)
    return load_config(run_dir / CONFIG_FILE, {**overrides, "output_dir": str(run_dir)})
