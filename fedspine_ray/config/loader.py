"""Reading configs: a YAML file (or the shipped default) plus dotted overrides -> a validated config."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fedspine_ray.config.coerce import build_dataclass
from fedspine_ray.config.errors import ConfigError
from fedspine_ray.config.sections import ExperimentConfig

DEFAULT_CONFIG_NAME = "default.yaml"


def shipped_config_path(name: str = DEFAULT_CONFIG_NAME) -> Path:
    """Path of a config shipped inside the package (``fedspine_ray/configs/<name>``)."""
    path = Path(str(resources.files("fedspine_ray") / "configs" / name))
    if not path.is_file():
        raise ConfigError(f"config: no shipped config named {name!r} in {path.parent}")
    return path


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> ExperimentConfig:
    """Read and validate a YAML config; ``None`` loads the shipped default."""
    config_path = Path(path) if path is not None else shipped_config_path()
    config = config_from_dict(read_yaml(config_path, "config") or {})
    return config.with_overrides(overrides) if overrides else config


def read_yaml(path: Path, what: str) -> Any:
    """Parse a YAML file, turning a missing file or bad YAML into a :class:`ConfigError` about ``what``."""
    if not path.is_file():
        raise ConfigError(f"{what}: file {str(path)!r} not found; pass an existing YAML path")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: {path} is not valid YAML: {yaml_error_summary(exc)}") from None


def yaml_error_summary(exc: yaml.YAMLError) -> str:
    """One line (``line 3, column 7: mapping values are not allowed here; fix the YAML syntax there``)
    instead of PyYAML's multi-line parser trace, so the CLI's error stays one line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{' '.join(str(problem).split())}; fix the YAML syntax there"


def config_from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from plain data (parsed YAML)."""
    config = build_dataclass(ExperimentConfig, raw, "")
    config.validate()
    return config
