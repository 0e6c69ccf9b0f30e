"""Checks of the config against the filesystem and the installed packages, run before Ray starts.

:func:`fedspine_ray.config.load_config` validates types and ranges only; whether ``model.path`` exists,
``data.source`` is registered, ``data.train_path`` is a readable file or ``devices.mix`` names known device
classes used to be found out inside the server actor, after a cluster start, as a multi-line traceback.
:func:`check_inputs` asks the same questions in the launching process, in a second, and raises
:class:`ConfigError` whose one-line message starts with the field (``data.train_path: ...; fix: ...``).
``run_experiment`` calls it before it imports Ray; the CLI turns the error into exit code 2.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fedspine_ray.config import ConfigError, ExperimentConfig

#: File types ``data.source: files`` reads (fedspine_ray.data.sources.read_table).
DATA_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


def check_inputs(config: ExperimentConfig) -> None:
    """Raise :class:`ConfigError` for the first input the run would fail on after Ray has started."""
    check_model_path(config.model.path)
    check_data(config)
    check_devices(config)
    check_server(config)


def check_devices(config: ExperimentConfig) -> None:
    """``devices.profiles_path`` is a readable profile file and ``devices.mix`` names its classes."""
    from fedspine_ray.devices.profiles import load_device_profiles

    devices = config.devices
    if not devices.mix:
        return
    try:
        profiles = load_device_profiles(devices.profiles_path)
    except (OSError, ValueError) as exc:
        raise ConfigError(_one_line(str(exc), "devices.profiles_path")) from None
    unknown = sorted(set(devices.mix) - set(profiles))
    if unknown:
        raise ConfigError(
            f"devices.mix: unknown device class {unknown[:1]}; fix: use one of {sorted(profiles)} or add it "
            "to a profile file named by devices.profiles_path"
        )


def check_model_path(spec: str) -> None:
    """``model.path`` names a local Hugging Face directory or a GGUF file (without converting the GGUF:
    that costs ~25 s and happens once in the server)."""
    from fedspine_ray.modeling.paths import ModelPathError, checked_model_path, is_gguf

    try:
        path = checked_model_path(spec)
    except ModelPathError as exc:
        raise ConfigError(_one_line(str(exc), "model.path")) from None
    if is_gguf(path) and importlib.util.find_spec("gguf") is None:
        raise ConfigError("model.path: reading a .gguf file needs the gguf package; fix: pip install gguf")


def check_data(config: ExperimentConfig) -> None:
    """``data.source`` is registered and the data files it reads exist with a supported type."""
    from fedspine_ray.data.sources import available_sources

    data = config.data
    sources = available_sources()
    if data.source not in sources:
        raise ConfigError(
            f"data.source: unknown source {data.source!r}; fix: choose one of {sources} (or register your "
            "own with fedspine_ray.data.register_source)"
        )
    for name in ("train_path", "test_path"):
        value = getattr(data, name)
        if value is None:
            continue
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"data.{name}: file {str(path)!r} not found; fix: point it at an existing "
                f"{'/'.join(DATA_SUFFIXES)} file"
            )
        if path.suffix.lower() not in DATA_SUFFIXES:
            raise ConfigError(
                f"data.{name}: unsupported file type {path.suffix!r}; fix: use one of {list(DATA_SUFFIXES)}"
            )


def check_server(config: ExperimentConfig) -> None:
    """``server.backend: deepspeed`` needs DeepSpeed installed where the server actor runs."""
    server = getattr(config, "server", None)
    if server is not None and server.backend == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "server.backend: 'deepspeed' needs the deepspeed package; fix: pip install deepspeed"
        )


def _one_line(message: str, field_name: str) -> str:
    text = " ".join(message.split())
    return text if text.startswith(f"{field_name}:") else f"{field_name}: {text}"
