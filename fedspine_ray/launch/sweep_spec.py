"""Sweep files: a base experiment, fixed overrides, named variants and a search space, all validated.

A sweep YAML names a base experiment config and a search space of dotted config keys (``method.name``,
``lora.rank``, ...). Everything is validated before Ray starts (every value of every key is applied to the
base config, each variant's inputs are checked as ``fedspine run`` checks them), so a typo in trial 7 fails
in a second, not after six runs. Running the trials is :mod:`.tune`'s job. See docs/sweeps.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedspine_ray.config import (
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    load_config,
    read_yaml,
    shipped_config_path,
)
from fedspine_ray.launch.preflight import check_inputs

TRIALS_FILE = "trials.parquet"
RUNS_SUBDIR = "runs"
#: Written into each trial's run directory: trial id, variant and parameters, so ``analysis/`` can group
#: runs by variant (e.g. ``fedit`` vs ``fedit_pruned``, which share ``method.name``) without trials.parquet.
TRIAL_FILE = "trial.json"
#: Tune parameter naming the trial's entry of ``variants`` (also a column of trials.parquet).
VARIANT_KEY = "variant"
#: Search-space kinds: ``grid`` tries every value, ``choice`` samples one per trial, the ranges sample.
DOMAIN_KINDS = ("grid", "choice", "uniform", "loguniform")
#: Per-round metrics every method reports (fedspine_ray/runtime/server.py ``round_row``); ``metric`` must
#: be one of them so a typo fails at load time rather than after the sweep.
ROUND_METRICS = (
    "test_accuracy",
    "test_loss",
    "train_loss",
    "sim_time_s",
    "wall_time_s",
    "bytes_up",
    "bytes_down",
    "trainable_params",
    "total_params",
    "sparsity",
)
#: Round-row columns copied into the trials table as the trial's final values.
FINAL_COLUMNS = ROUND_METRICS + ("round",)
_SPEC_FIELDS = (
    "name",
    "base_config",
    "base",
    "overrides",
    "search_space",
    "variants",
    "num_samples",
    "metric",
    "mode",
    "max_concurrent_trials",
    "storage_path",
    "trial_cpus",
)
_MAX_VALIDATED_COMBINATIONS = 1000
#: Sections whose values name files, packages or device classes (checked by launch/preflight.py per trial).
_INPUT_SECTIONS = ("model", "data", "devices", "server")
_PATH_FIELDS = (
    ("data", "train_path"),
    ("data", "test_path"),
    ("devices", "profiles_path"),
    ("model", "path"),
)


@dataclass(frozen=True)
class SearchDomain:
    """Values one dotted config key takes: ``grid``/``choice`` over ``values``, or a ``[low, high]`` range."""

    kind: str
    values: tuple[Any, ...]

    def to_tune(self) -> Any:
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "uniform":
            return tune.uniform(*self.values)
        return tune.loguniform(*self.values)


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: the base experiment (plain dict, fixed overrides applied) and the search space."""

    name: str
    base: dict[str, Any]
    search_space: dict[str, SearchDomain]
    num_samples: int = 1
    metric: str = "test_accuracy"
    mode: str = "max"
    max_concurrent_trials: int = 1
    storage_path: str = "sweeps"
    trial_cpus: float = 0.01
    source: str = "<inline>"
    param_keys: tuple[str, ...] = field(default=())
    #: Named sets of dotted overrides, each crossed with ``search_space`` (e.g. a method with and without
    #: ``method.prune_global``), which a grid over independent keys cannot express.
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def sweep_dir(self) -> Path:
        """Absolute ``<storage_path>/<name>``: Tune's experiment directory and the home of trials.parquet."""
        return (Path(self.storage_path).expanduser() / self.name).resolve()

    def base_config(self) -> ExperimentConfig:
        return config_from_dict(self.base)

    def trial_config(
        self, params: Mapping[str, Any], output_dir: str | Path | None = None
    ) -> ExperimentConfig:
        """The experiment one trial runs: the base with the trial's variant, then its dotted overrides."""
        overrides = dict(params)
        variant = overrides.pop(VARIANT_KEY, None)
        if variant is not None:
            if variant not in self.variants:
                raise ConfigError(f"sweep.variants: no variant {variant!r}; known: {sorted(self.variants)}")
            overrides = {**self.variants[variant], **overrides}
        if output_dir is not None:
            overrides["output_dir"] = str(output_dir)
        return self.base_config().with_overrides(overrides)


# --------------------------------------------------------------------------------------------- loading
def load_sweep(path: str | Path, overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """Read and validate a sweep YAML; ``overrides`` are extra fixed dotted overrides (CLI ``--set``)."""
    sweep_path = Path(path)
    raw = read_yaml(sweep_path, "sweep")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"sweep: {sweep_path} must contain a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    raw.setdefault("name", sweep_path.stem)
    if overrides:
        raw["overrides"] = {**(raw.get("overrides") or {}), **overrides}
    return sweep_from_dict(raw, base_dir=sweep_path.parent, source=str(sweep_path))


def sweep_from_dict(
    raw: Mapping[str, Any], base_dir: str | Path = ".", source: str = "<inline>"
) -> SweepSpec:
    """Build a :class:`SweepSpec` from parsed YAML; relative ``base_config`` paths resolve from ``base_dir``."""
    unknown = sorted(set(raw) - set(_SPEC_FIELDS))
    if unknown:
        raise ConfigError(f"sweep.{unknown[0]}: unknown field; known fields are {sorted(_SPEC_FIELDS)}")
    base = _load_base(raw, Path(base_dir))
    fixed = _mapping(raw.get("overrides") or {}, "sweep.overrides")
    try:
        base_config = base.with_overrides(fixed) if fixed else base
    except ConfigError as exc:
        raise ConfigError(f"sweep.overrides.{exc}") from None
    variants = _parse_variants(raw.get("variants"))
    space = _parse_space(raw.get("search_space"), required=not variants)
    spec = SweepSpec(
        name=_name(raw.get("name", "sweep")),
        base=_absolute_paths(base_config.to_dict()),
        search_space=space,
        num_samples=_int(raw.get("num_samples", 1), "sweep.num_samples", 1, 10_000),
        metric=_choose(raw.get("metric", "test_accuracy"), "sweep.metric", ROUND_METRICS),
        mode=_choose(raw.get("mode", "max"), "sweep.mode", ("max", "min")),
        max_concurrent_trials=_int(
            raw.get("max_concurrent_trials", 1), "sweep.max_concurrent_trials", 1, 1024
        ),
        storage_path=_string(raw.get("storage_path", "sweeps"), "sweep.storage_path"),
        trial_cpus=_trial_cpus(raw.get("trial_cpus", 0.01)),
        source=source,
        param_keys=((VARIANT_KEY,) if variants else ()) + tuple(space),
        variants=variants,
    )
    _validate_trials(spec)
    return spec


def _load_base(raw: Mapping[str, Any], base_dir: Path) -> ExperimentConfig:
    if "base" in raw and "base_config" in raw:
        raise ConfigError("sweep.base: give either base_config (a file) or base (inline), not both")
    if "base" in raw:
        try:
            return config_from_dict(_mapping(raw["base"], "sweep.base"))
        except ConfigError as exc:
            raise ConfigError(f"sweep.base.{exc}") from None
    ref = raw.get("base_config")
    if ref is None:
        return load_config(None)
    ref = _string(ref, "sweep.base_config")
    path = _resolve_base_path(ref, base_dir)
    try:
        return load_config(path)
    except ConfigError as exc:
        raise ConfigError(f"sweep.base_config ({ref}): {exc}") from None


def _resolve_base_path(ref: str, base_dir: Path) -> Path:
    """``package:NAME`` is a shipped config; a relative path is tried from the sweep file, then the CWD."""
    if ref.startswith("package:"):
        try:
            return shipped_config_path(ref.removeprefix("package:"))
        except ConfigError as exc:
            raise ConfigError(f"sweep.base_config: {exc}") from None
    path = Path(ref).expanduser()
    candidates = [path] if path.is_absolute() else [base_dir / path, Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"sweep.base_config: file {ref!r} not found (tried {tried})")


def _parse_variants(raw: Any) -> dict[str, dict[str, Any]]:
    """``variants: {name: {dotted.key: value, ...}}``; names become the ``variant`` column and run labels."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(
            "sweep.variants: expected a non-empty mapping of names to dotted overrides, "
            "e.g. {fedit_pruned: {method.name: fedit, method.prune_global: true}}"
        )
    variants = {}
    for name, overrides in raw.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigError(
                f"sweep.variants: a variant name must be a plain non-empty string, got {name!r}"
            )
        variants[name] = _mapping(overrides or {}, f"sweep.variants.{name}")
    return variants


def _parse_space(raw: Any, required: bool = True) -> dict[str, SearchDomain]:
    if raw is None and not required:
        return {}
    if not isinstance(raw, Mapping) or (not raw and required):
        raise ConfigError(
            "sweep.search_space: required, a non-empty mapping of dotted config keys to value lists, "
            "e.g. {method.name: [fedit, hetlora]}"
        )
    return {str(key): _parse_domain(str(key), value) for key, value in raw.items()}


def _parse_domain(key: str, value: Any) -> SearchDomain:
    where = f"sweep.search_space.{key}"
    if isinstance(value, list):
        value = {"grid": value}
    if not isinstance(value, Mapping) or len(value) != 1 or next(iter(value)) not in DOMAIN_KINDS:
        raise ConfigError(
            f"{where}: expected a list of values or one of {{grid: [...]}}, {{choice: [...]}}, "
            f"{{uniform: [low, high]}}, {{loguniform: [low, high]}}; got {value!r} "
            "(fixed values belong under sweep.overrides)"
        )
    kind, values = next(iter(value.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}.{kind}: expected a non-empty list, got {values!r}")
    if kind in ("uniform", "loguniform"):
        ok = len(values) == 2 and all(_is_number(v) for v in values) and values[0] < values[1]
        ok = ok and (kind == "uniform" or values[0] > 0)
        if not ok:
            raise ConfigError(f"{where}.{kind}: expected [low, high] numbers with low < high (> 0 for log)")
        values = [float(v) for v in values]
    return SearchDomain(kind, tuple(values))


def _validate_trials(spec: SweepSpec) -> None:
    """Apply every value of every key to the base (and the whole grid when it is small) before Ray starts.

    With ``variants``, each variant is checked alone (types, ranges and its inputs: files, device classes)
    and then as the base of every check below.
    """
    if not spec.variants:
        _checked_inputs(spec.base_config(), "sweep.base")
        _validate_space(spec, spec.base_config())
        return
    for name, overrides in spec.variants.items():
        try:
            base = spec.base_config().with_overrides(overrides)
        except ConfigError as exc:
            raise ConfigError(f"sweep.variants.{name}.{exc}") from None
        _checked_inputs(base, f"sweep.variants.{name}")
        _validate_space(spec, base)


def _checked_inputs(config: ExperimentConfig, where: str) -> None:
    try:
        check_inputs(config)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc}") from None


def _validate_space(spec: SweepSpec, base: ExperimentConfig) -> None:
    for key, domain in spec.search_space.items():
        for value in domain.values:
            _check_override(base, {key: value})
    grids = {k: d.values for k, d in spec.search_space.items() if d.kind == "grid"}
    if len(grids) > 1 and math.prod(len(v) for v in grids.values()) <= _MAX_VALIDATED_COMBINATIONS:
        for combo in itertools.product(*grids.values()):
            _check_override(base, dict(zip(grids, combo, strict=True)))


def _check_override(base: ExperimentConfig, params: Mapping[str, Any]) -> None:
    try:
        trial = base.with_overrides(params)
        if any(key.split(".")[0] in _INPUT_SECTIONS for key in params):
            check_inputs(trial)
    except ConfigError as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        raise ConfigError(f"sweep.search_space.{exc} (trial with {shown})") from None


def _absolute_paths(config: dict[str, Any]) -> dict[str, Any]:
    """Make existing relative file paths absolute: Tune runs each trial in its own working directory."""
    for section, key in _PATH_FIELDS:
        value = config.get(section, {}).get(key)
        if isinstance(value, str) and not value.startswith("package:") and Path(value).exists():
            config[section][key] = str(Path(value).resolve())
    return config


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return {str(k): v for k, v in value.items()}


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}: expected an integer in [{low}, {high}], got {value!r}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _trial_cpus(value: Any) -> float:
    if not _is_number(value) or not 0 < value <= 64:
        raise ConfigError(
            f"sweep.trial_cpus: expected a number in (0, 64], got {value!r} (Ray rejects 0; the "
            "federated run's own actors carry the real load)"
        )
    return float(value)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _name(value: Any) -> str:
    name = _string(value, "sweep.name")
    if "/" in name or name in (".", ".."):
        raise ConfigError(f"sweep.name: must be a plain directory name, got {name!r}")
    return name


def _choose(value: Any, where: str, options: Sequence[str]) -> str:
    if value not in options:
        raise ConfigError(f"{where}: expected one of {list(options)}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------- subsets
def select_variants(spec: SweepSpec, names: Sequence[str]) -> SweepSpec:
    """The sweep restricted to ``names`` of its variants (a quick subset of a large comparison)."""
    unknown = [n for n in names if n not in spec.variants]
    if unknown or not names:
        raise ConfigError(
            f"--variants: unknown variant {unknown[0] if unknown else ''!r}; the sweep has {sorted(spec.variants)}"
        )
    return dataclasses.replace(spec, variants={n: spec.variants[n] for n in names})


def with_storage(spec: SweepSpec, storage_path: str) -> SweepSpec:
    return dataclasses.replace(spec, storage_path=storage_path)
