"""Ray Tune sweeps over federated experiments: one Tune trial = one full federated run.

A sweep YAML names a base experiment config and a search space of dotted config keys
(``method.name``, ``lora.rank``, ...). Everything is validated before Ray starts (every value of every
key is applied to the base config), so a typo in trial 7 fails in a second, not after six runs.

Resources: a trial only *drives* a federated run, whose server actor (``num_cpus=0``) and client actors
(fractional CPUs, memory and device-class resources from the config) are separate Ray actors. Tune runs
every trial inside a placement group and Ray places the actors a trial creates *inside that group*, so
the group is sized to the run: a tiny head bundle for the trial itself (``trial_cpus``, default 0.01 --
Ray refuses an empty request) plus one bundle per client actor, exactly what that actor asks for. Tune
then starts a trial only when its whole federated run fits, and ``max_concurrent_trials`` (default 1)
additionally keeps concurrent runs from competing for a small box's cores and distorting wall-clock
numbers. Raise it on a cluster.

Outputs under ``<storage_path>/<name>/``: Tune's own experiment state, ``runs/<trial_id>/`` (each trial's
normal run directory: rounds.parquet, clients.parquet, config.yaml, ...) and ``trials.parquet``
(one row per trial: its parameters and final metrics). See docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import numbers
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fedspine_ray.cli_options import add_override_argument, parse_overrides
from fedspine_ray.config import (
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    load_config,
    read_yaml,
    shipped_config_path,
)
from fedspine_ray.results import atomic_write

log = logging.getLogger("fedspine_ray.sweep")

TRIALS_FILE = "trials.parquet"
RUNS_SUBDIR = "runs"
#: Written into each trial's run directory: trial id, variant and parameters, so ``analysis/`` can group
#: runs by variant (e.g. ``fedit`` vs ``fedit_pruned``, which share ``method.name``) without trials.parquet.
TRIAL_FILE = "trial.json"
#: Tune parameter naming the trial's entry of ``variants`` (also a column of trials.parquet).
VARIANT_KEY = "variant"
EXIT_CONFIG_ERROR = 2
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

    With ``variants``, each variant is checked alone and then as the base of every check below.
    """
    if not spec.variants:
        _validate_space(spec, spec.base_config())
        return
    for name, overrides in spec.variants.items():
        try:
            base = spec.base_config().with_overrides(overrides)
        except ConfigError as exc:
            raise ConfigError(f"sweep.variants.{name}.{exc}") from None
        _validate_space(spec, base)


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
        base.with_overrides(params)
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


# --------------------------------------------------------------------------------------------- running
def run_trial(params: dict[str, Any], spec: SweepSpec) -> None:
    """Tune function trainable: run one federated experiment and report every round to Tune.

    Lives at module level so Ray pickles it by reference. The run uses the Ray the trial already runs
    in (``run_experiment`` does not start or stop Ray when one is connected).
    """
    from ray import tune

    from fedspine_ray.runner import run_experiment

    trial_id = tune.get_context().get_trial_id()
    output_dir = spec.sweep_dir / RUNS_SUBDIR / trial_id
    config = spec.trial_config(params, output_dir)
    trial = {"trial_id": trial_id, VARIANT_KEY: params.get(VARIANT_KEY), "params": dict(params)}
    atomic_write(output_dir / TRIAL_FILE, lambda tmp: tmp.write_text(json.dumps(trial, default=str)))

    def report(row: dict[str, Any]) -> None:
        tune.report({**_loggable(row), "output_dir": str(output_dir)})

    # A trial cut off by a killed sweep (``fedspine sweep --resume``) continues from its run's checkpoint
    # when its config writes them (runtime.checkpoint_every), instead of starting over.
    from fedspine_ray.checkpoint import CHECKPOINT_FILE

    resume = (output_dir / CHECKPOINT_FILE).is_file()
    run_experiment(config, progress=False, quiet=True, on_round=report, resume=resume)


def _loggable(row: Mapping[str, Any]) -> dict[str, Any]:
    """Round-row values Tune can log (numbers and strings); anything else becomes JSON text."""
    return {
        k: v if isinstance(v, (numbers.Number, str)) else json.dumps(v, default=str) for k, v in row.items()
    }


def run_sweep(
    spec: SweepSpec, address: str | None = None, quiet: bool = False, resume: bool = False
) -> pd.DataFrame:
    """Run every trial of ``spec`` with Ray Tune and return the trials table (also saved as Parquet).

    ``address`` joins a running cluster (``"auto"``); otherwise an already-initialised Ray is used, or an
    embedded local Ray is started (with the device-class custom resources the trials need) and stopped.
    ``resume`` continues an interrupted sweep from Tune's state in ``spec.sweep_dir`` (``Tuner.restore``):
    finished trials are kept, not run again; unfinished and errored ones run (from their run's checkpoint
    when it has one).
    """
    import ray
    from ray import tune

    started = _ensure_ray(spec, address, quiet)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, spec=spec), lambda params: trial_placement(spec, params)
        )
        param_space = {key: domain.to_tune() for key, domain in spec.search_space.items()}
        if spec.variants:
            param_space[VARIANT_KEY] = tune.grid_search(list(spec.variants))
        restored = (
            tune.Tuner.restore(str(spec.sweep_dir), trainable=trainable, resume_errored=True)
            if resume
            else None
        )
        tuner = restored or tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                num_samples=spec.num_samples, max_concurrent_trials=spec.max_concurrent_trials
            ),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=str(spec.sweep_dir.parent),
                verbose=0 if quiet else 1,
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        grid = tuner.fit()
        table = trials_table(grid, spec)
    finally:
        if started:
            ray.shutdown()
    path = spec.sweep_dir / TRIALS_FILE
    atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))
    log.info("sweep %s: %d trials -> %s", spec.name, len(table), path)
    return table


def trial_bundles(spec: SweepSpec, params: Mapping[str, Any]) -> list[dict[str, float]]:
    """Resource bundles of one trial: its own head bundle, then one per client actor of its run.

    Mirrors how the server creates client actors (device profile options, else ``clients.resources``),
    because those actors must fit inside the trial's placement group.
    """
    from fedspine_ray.runtime.device_sim import build_client_devices

    bundles = [{"CPU": spec.trial_cpus}]
    for device in build_client_devices(spec.trial_config(params)):
        options = device.actor_options()
        bundle = {"CPU": float(options["num_cpus"]), "memory": float(options["memory"])}
        bundle.update({name: float(amount) for name, amount in options.get("resources", {}).items()})
        bundles.append(bundle)
    return bundles


def trial_placement(spec: SweepSpec, params: Mapping[str, Any]) -> Any:
    """Tune resource callable: a PACK placement group holding the trial and its whole federated run."""
    from ray import tune

    return tune.PlacementGroupFactory(trial_bundles(spec, params), strategy="PACK")


def _ensure_ray(spec: SweepSpec, address: str | None, quiet: bool) -> bool:
    """Start or join Ray like ``fedspine run`` does, declaring every device class any trial may use."""
    import ray

    from fedspine_ray.devices import local_custom_resources
    from fedspine_ray.runner import ensure_ray

    if ray.is_initialized():
        return False
    base = spec.base_config()
    if address is None:
        resources = dict(local_custom_resources(base.devices))
        for key, domain in spec.search_space.items():
            if key.startswith("devices.") and domain.kind in ("grid", "choice"):
                for value in domain.values:
                    resources.update(local_custom_resources(base.with_overrides({key: value}).devices))
        for overrides in spec.variants.values():
            resources.update(local_custom_resources(base.with_overrides(overrides).devices))
        if resources:  # ensure_ray declares the base config's classes only; give it the union
            base = base.with_overrides({"devices.mix": {name: 1.0 for name in _classes(resources, base)}})
    return ensure_ray(address, base, quiet)


def _classes(resources: Mapping[str, float], base: ExperimentConfig) -> list[str]:
    from fedspine_ray.devices import load_device_profiles

    profiles = load_device_profiles(base.devices.profiles_path)
    return [name for name, profile in profiles.items() if profile.ray_resource in resources]


def trials_table(grid: Any, spec: SweepSpec) -> pd.DataFrame:
    """One row per trial: ``trial_id``, its parameters, status/error, final and best metric values."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        history = result.metrics_dataframe
        row: dict[str, Any] = {"trial_id": metrics.get("trial_id") or _trial_id_from_path(result.path)}
        output_dir = metrics.get("output_dir") or str(spec.sweep_dir / RUNS_SUBDIR / row["trial_id"])
        config = {**_recorded_params(Path(output_dir)), **(result.config or {})}
        row.update({key: config.get(key) for key in spec.param_keys})
        row["status"] = "error" if result.error is not None else "ok"
        row["error"] = None if result.error is None else _error_summary(result.error)
        for column in FINAL_COLUMNS:
            row[column] = metrics.get(column, math.nan)
        best = math.nan
        if history is not None and spec.metric in history:
            values = history[spec.metric].dropna()
            best = float(values.max() if spec.mode == "max" else values.min()) if len(values) else math.nan
        row[f"best_{spec.metric}"] = best
        row["output_dir"] = output_dir
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values("trial_id", kind="stable").reset_index(drop=True)
    return _parquet_safe(table, spec.param_keys)


def _recorded_params(output_dir: Path) -> dict[str, Any]:
    """The parameters a trial wrote into its run directory (``trial.json``) when it started.

    A fallback for ``trials_table``: a trial restored by ``--resume`` from experiment state that Tune saved
    while the trial was starting can come back without its config (seen once under heavy load: a row with
    ``seed`` None), but its run directory still says what it ran.
    """
    try:
        return dict(json.loads((output_dir / TRIAL_FILE).read_text()).get("params") or {})
    except (OSError, ValueError, AttributeError):
        return {}


def _error_summary(error: BaseException) -> str:
    """The exception line of a trial's error: Ray wraps it in a traceback whose *last* line is the cause."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:500]


def _trial_id_from_path(path: str | None) -> str:
    # Tune trial dirs are "<trainable>_<trial_id>_<index>_<params>_<date>"; the id is "<hash>_<index5>".
    parts = Path(path or "unknown").name.split("_")
    return "_".join(parts[-5:-3]) if len(parts) >= 5 else Path(path or "unknown").name


def _parquet_safe(table: pd.DataFrame, param_keys: Sequence[str]) -> pd.DataFrame:
    """Parameter columns holding lists/dicts or mixed types become JSON text so Parquet can store them."""
    for key in param_keys:
        if key not in table:
            continue
        values = table[key].tolist()
        kinds = {type(v) for v in values if v is not None}
        if len(kinds) > 1 or kinds & {list, dict, tuple}:
            table[key] = [None if v is None else json.dumps(v, sort_keys=True) for v in values]
    return table


# --------------------------------------------------------------------------------------------- CLI
def add_sweep_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``fedspine sweep SWEEP.yaml [--address auto] [--set key=value ...]``."""
    sweep = subparsers.add_parser("sweep", help="run a Ray Tune sweep of federated experiments")
    sweep.add_argument("sweep_file", help="sweep YAML (see tune_configs/ and docs/sweeps.md)")
    sweep.add_argument("--address", default=None, help="Ray address; 'auto' joins a running cluster")
    sweep.add_argument("--storage-path", default=None, help="override the sweep's storage_path")
    add_override_argument(
        sweep,
        "fixed override of the base config for every trial, e.g. --set training.rounds=2 (repeatable)",
    )
    sweep.add_argument(
        "--variants",
        default=None,
        help="comma-separated subset of the sweep's variants to run, e.g. --variants fedit,fedspine",
    )
    sweep.add_argument("--quiet", action="store_true", help="less Tune output")
    sweep.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted sweep (Tuner.restore): finished trials are not run again",
    )
    return sweep


def run_sweep_command(args: argparse.Namespace) -> int:
    """Handle ``fedspine sweep``: exit 2 on a config error (before Ray starts), 1 if any trial failed."""
    try:
        overrides = parse_overrides(args.overrides)
        spec = load_sweep(args.sweep_file, overrides)
        if args.storage_path:
            spec = _with_storage(spec, args.storage_path)
        if args.variants:
            spec = select_variants(spec, [v.strip() for v in args.variants.split(",") if v.strip()])
        if getattr(args, "resume", False):
            check_resumable(spec)
    except ConfigError as exc:
        print(f"fedspine: config error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    table = run_sweep(spec, address=args.address, quiet=args.quiet, resume=getattr(args, "resume", False))
    shown = ["trial_id", *spec.param_keys, "status", "test_accuracy", f"best_{spec.metric}", "sim_time_s"]
    print(table[[c for c in shown if c in table]].to_string(index=False))
    print(f"trials table: {spec.sweep_dir / TRIALS_FILE}")
    return 1 if (table["status"] != "ok").any() else 0


def check_resumable(spec: SweepSpec) -> None:
    """``--resume`` needs Tune's state of an earlier start of this sweep; fail before Ray starts without it."""
    from ray.tune import Tuner

    if not Tuner.can_restore(str(spec.sweep_dir)):
        raise ConfigError(
            f"--resume: {spec.sweep_dir} holds no Tune experiment state to resume; fix: run the sweep without "
            "--resume first, with the same name and storage_path (--storage-path)"
        )


def select_variants(spec: SweepSpec, names: Sequence[str]) -> SweepSpec:
    """The sweep restricted to ``names`` of its variants (a quick subset of a large comparison)."""
    import dataclasses

    unknown = [n for n in names if n not in spec.variants]
    if unknown or not names:
        raise ConfigError(
            f"--variants: unknown variant {unknown[0] if unknown else ''!r}; the sweep has {sorted(spec.variants)}"
        )
    return dataclasses.replace(spec, variants={n: spec.variants[n] for n in names})


def _with_storage(spec: SweepSpec, storage_path: str) -> SweepSpec:
    import dataclasses

    return dataclasses.replace(spec, storage_path=storage_path)


__all__ = [
    "TRIAL_FILE",
    "VARIANT_KEY",
    "SearchDomain",
    "SweepSpec",
    "add_sweep_command",
    "load_sweep",
    "run_sweep",
    "run_sweep_command",
    "run_trial",
    "select_variants",
    "sweep_from_dict",
    "trial_bundles",
    "trial_placement",
    "trials_table",
]
