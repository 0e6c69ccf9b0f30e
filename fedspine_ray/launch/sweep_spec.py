"""Sweep files: a base experiment, fixed overrides, named variants and a search space, all validated.

A sweep YAML names a base experiment config and a search space of dotted config keys (``method.name``,
``lora.rank``, ...). Everything is validated before Ray starts (every value of every key is applied to the
base config, each variant's inputs are checked as ``fedspine run`` checks them), so a typo in trial 7 fails
in a second, not after six runs. Running the trials is :mod:`.tune`'s job. See docs/sweeps.md.

Beyond the grid: a Tune ``scheduler`` (ASHA, HyperBand, PBT) that stops, pauses or clones trials by their
per-round curve, a ``search_alg`` (Optuna TPE, HyperOpt) that proposes the next trial's values, ``stop``
criteria, a ``time_budget_s`` and ``max_failures``. Their rules are checked here too: a searcher cannot walk a
grid, PBT and HyperBand continue trials from checkpoints so the runs must write them, and a missing
``optuna`` is a one-line error naming the extra, not an ImportError inside Tune.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import math
import re
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
#: runs by variant (e.g. ``fedit`` vs ``fedit_pruned``, which share ``method.name``) without trials.parquet;
#: also the process id and which checkpoint (round, ``tune`` / ``run_dir``) its latest start resumed from.
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
#: What Tune's schedulers count progress in (``time_attr``): federated rounds (round 0, the evaluation before
#: training, is the first report), or simulated seconds, so runs whose rounds differ in length (FedSpine's
#: round-time knobs) are compared at equal simulated time.
TIME_ATTRS = ("round", "sim_time_s")
#: Tune schedulers a sweep may name, and the fields each takes (besides ``type``).
SCHEDULER_FIELDS: dict[str, tuple[str, ...]] = {
    "asha": ("time_attr", "max_t", "grace_period", "reduction_factor"),
    "hyperband": ("time_attr", "max_t", "reduction_factor"),
    "pbt": (
        "perturbation_interval",
        "burn_in_period",
        "hyperparam_mutations",
        "quantile_fraction",
        "resample_probability",
        "synch",
    ),
}
#: Search algorithms a sweep may name -> the package it needs (the ``hpo`` extra installs both).
SEARCH_ALG_PACKAGES = {"optuna": "optuna", "hyperopt": "hyperopt"}
HPO_EXTRA = 'pip install "fedspine-ray[hpo]"'
#: Keys PBT may mutate: the server reads them from the trial's config every round, so a trial that continues
#: another trial's checkpoint trains with its own value. Anything else that shapes the learned state (LoRA
#: ranks, the pruning schedule, bandit settings) is restored from the checkpoint it clones, and a mutation of it
#: would be silently overwritten.
PBT_MUTABLE_KEYS = (
    "training.lr",
    "training.weight_decay",
    "training.local_steps",
    "training.batch_size",
    "lora.dropout",
)
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
    "scheduler",
    "search_alg",
    "stop",
    "time_budget_s",
    "max_failures",
)
#: ``scheme://`` of a storage URI Ray Tune accepts (``s3://``, ``gs://``, ``file://``, ...).
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
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

    def to_mutation(self) -> Any:
        """The domain as a PBT ``hyperparam_mutations`` entry: a list (PBT steps to a neighbouring value) or a
        Tune distribution (PBT resamples it, or scales the current value by 0.8 / 1.2)."""
        if self.kind in ("grid", "choice"):
            return list(self.values)
        return self.to_tune()


@dataclass(frozen=True)
class SchedulerSpec:
    """A Tune trial scheduler over the per-round reports (``time_attr`` = ``round``).

    ``asha`` stops trials whose metric trails the others' at the same round (asynchronous successive
    halving); ``hyperband`` does the same in synchronous brackets, pausing trials at their rungs; ``pbt``
    (population based training) every ``perturbation_interval`` rounds replaces the bottom quantile's trials
    by a copy of a top trial's checkpoint with mutated ``hyperparam_mutations``.
    """

    kind: str
    #: asha / hyperband: ``round`` or ``sim_time_s``, the unit of ``max_t`` and ``grace_period`` (pbt: rounds).
    time_attr: str = "round"
    #: asha / hyperband: the most a trial runs, in ``time_attr`` units (default: the base's ``training.rounds``).
    max_t: float = 1
    #: asha: how long (``time_attr``) every trial runs before it may be stopped.
    grace_period: float = 1
    #: asha / hyperband: the fraction ``1 / reduction_factor`` of trials goes on at each rung.
    reduction_factor: float = 4.0
    #: pbt: rounds between two exploit/explore decisions of a trial.
    perturbation_interval: int = 1
    #: pbt: rounds before the first decision.
    burn_in_period: int = 0
    #: pbt: dotted config key -> values or range to mutate (keys among :data:`PBT_MUTABLE_KEYS`).
    hyperparam_mutations: dict[str, SearchDomain] = field(default_factory=dict)
    #: pbt: fraction of trials in the top (cloned) and bottom (replaced) quantiles, in (0, 0.5].
    quantile_fraction: float = 0.25
    #: pbt: probability of resampling a mutated value instead of perturbing it.
    resample_probability: float = 0.25
    #: pbt: decide only when every trial reached the round (trials wait, paused, for the slowest); otherwise each
    #: trial is compared with the others' latest scores when it gets there (Tune's default).
    synch: bool = False

    @property
    def uses_checkpoints(self) -> bool:
        """HyperBand resumes paused trials and PBT clones them: both continue runs from a checkpoint."""
        return self.kind in ("hyperband", "pbt")

    def to_tune(self) -> Any:
        """The Tune scheduler; ``metric`` / ``mode`` come from the ``TuneConfig``."""
        from ray.tune.schedulers import ASHAScheduler, HyperBandScheduler, PopulationBasedTraining

        if self.kind == "asha":
            return ASHAScheduler(
                time_attr=self.time_attr,
                max_t=self.max_t,
                grace_period=self.grace_period,
                reduction_factor=self.reduction_factor,
            )
        if self.kind == "hyperband":
            return HyperBandScheduler(
                time_attr=self.time_attr, max_t=self.max_t, reduction_factor=self.reduction_factor
            )
        return PopulationBasedTraining(
            time_attr="round",
            perturbation_interval=self.perturbation_interval,
            burn_in_period=self.burn_in_period,
            hyperparam_mutations={k: d.to_mutation() for k, d in self.hyperparam_mutations.items()},
            quantile_fraction=self.quantile_fraction,
            resample_probability=self.resample_probability,
            synch=self.synch,
        )


@dataclass(frozen=True)
class SearchAlgSpec:
    """A Tune search algorithm proposing each trial's values from the results so far."""

    #: ``optuna`` (TPE) or ``hyperopt`` (TPE); both need ``pip install "fedspine-ray[hpo]"``.
    kind: str
    #: Seed of the searcher's sampler (``null``: unseeded).
    seed: int | None = None

    def to_tune(self) -> Any:
        """The Tune searcher; ``metric`` / ``mode`` come from the ``TuneConfig``."""
        if self.kind == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            return OptunaSearch(seed=self.seed)
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(random_state_seed=self.seed)


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
    #: Tune trial scheduler (``None``: every trial runs to its end).
    scheduler: SchedulerSpec | None = None
    #: Tune search algorithm (``None``: grids and random sampling of ``search_space``).
    search_alg: SearchAlgSpec | None = None
    #: Stop a trial once a reported value reaches (>=) the threshold, e.g. ``{round: 5}``.
    stop: dict[str, float] = field(default_factory=dict)
    #: Wall-clock seconds for the whole sweep; Tune stops the trials still running then (``None``: no limit).
    time_budget_s: float | None = None
    #: Times a crashed trial is restarted, from its last checkpoint when its run writes them.
    max_failures: int = 0

    @property
    def remote_storage(self) -> bool:
        """``storage_path`` is a URI of a filesystem other than this machine's (``s3://``, ``gs://``, ...)."""
        return is_uri(self.storage_path) and not self.storage_path.startswith("file://")

    @property
    def storage(self) -> str:
        """What Tune's ``RunConfig(storage_path=...)`` gets: a URI unchanged, a local path made absolute."""
        if is_uri(self.storage_path):
            return self.storage_path
        return str(Path(self.storage_path).expanduser().resolve())

    @property
    def location(self) -> str:
        """Tune's experiment directory ``<storage>/<name>`` as a URI or absolute path (``Tuner.restore``)."""
        if is_uri(self.storage_path):
            return f"{self.storage_path.rstrip('/')}/{self.name}"
        return str(self.sweep_dir)

    @property
    def sweep_dir(self) -> Path:
        """Absolute local ``<storage_path>/<name>``: Tune's experiment directory, the home of trials.parquet and
        of the trials' run directories. A ``file://`` URI names a local directory too; a remote URI has none
        (trials then write their run directories into Tune's trial directories, synced to the storage)."""
        if self.storage_path.startswith("file://"):
            return (Path(self.storage_path.removeprefix("file://")) / self.name).resolve()
        if is_uri(self.storage_path):
            raise ValueError(f"{self.storage_path}: remote storage has no local sweep directory")
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
    scheduler = _parse_scheduler(raw.get("scheduler"), _max_rounds(base_config, variants))
    search_alg = _parse_search_alg(raw.get("search_alg"))
    mutated = tuple(k for k in (scheduler.hyperparam_mutations if scheduler else {}) if k not in space)
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
        param_keys=((VARIANT_KEY,) if variants else ()) + tuple(space) + mutated,
        variants=variants,
        scheduler=scheduler,
        search_alg=search_alg,
        stop=_parse_stop(raw.get("stop")),
        time_budget_s=_time_budget(raw.get("time_budget_s")),
        max_failures=_int(raw.get("max_failures", 0), "sweep.max_failures", 0, 100),
    )
    _validate_trials(spec)
    _validate_tuning(spec)
    return spec


def is_uri(path: str) -> bool:
    """True for ``scheme://...`` (a storage URI Ray Tune resolves itself), False for a local path."""
    return bool(_URI.match(path))


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


def _parse_domain(key: str, value: Any, where: str | None = None) -> SearchDomain:
    where = where or f"sweep.search_space.{key}"
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


def _max_rounds(base: ExperimentConfig, variants: Mapping[str, Mapping[str, Any]]) -> int:
    """The most rounds any trial's base runs: ASHA's and HyperBand's default ``max_t``."""
    rounds = [base.training.rounds]
    for name, overrides in variants.items():
        try:
            rounds.append(base.with_overrides(overrides).training.rounds)
        except ConfigError as exc:
            raise ConfigError(f"sweep.variants.{name}.{exc}") from None
    return max(rounds)


def _parse_scheduler(raw: Any, max_rounds: int) -> SchedulerSpec | None:
    """``scheduler: asha`` or ``scheduler: {type: asha, grace_period: 2, ...}`` (fields: SCHEDULER_FIELDS)."""
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"type": raw}
    where = "sweep.scheduler"
    if not isinstance(raw, Mapping) or raw.get("type") not in SCHEDULER_FIELDS:
        kind = raw.get("type") if isinstance(raw, Mapping) else raw
        raise ConfigError(
            f"{where}.type: expected one of {list(SCHEDULER_FIELDS)}, got {kind!r} "
            "(e.g. scheduler: {type: asha, grace_period: 2})"
        )
    kind = str(raw["type"])
    unknown = sorted(set(raw) - {"type", *SCHEDULER_FIELDS[kind]})
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}: not a field of the {kind} scheduler; its fields are "
            f"{list(SCHEDULER_FIELDS[kind])}"
        )
    time_attr = _choose(raw.get("time_attr", "round"), f"{where}.time_attr", TIME_ATTRS)
    if time_attr == "round":
        max_t: float = _int(raw.get("max_t", max_rounds), f"{where}.max_t", 1, 100_000)
        grace = float(_int(raw.get("grace_period", 1), f"{where}.grace_period", 1, int(max_t)))
    else:  # simulated seconds: set-up resolves a time budget only after Ray starts, so max_t is explicit
        if "max_t" not in raw and kind in ("asha", "hyperband"):
            raise ConfigError(
                f"{where}.max_t: required with time_attr: sim_time_s, in simulated seconds (e.g. the runs' "
                "training.max_sim_time_s)"
            )
        max_t = _number(raw.get("max_t", 1), f"{where}.max_t", 0, math.inf, True)
        grace = _number(raw.get("grace_period", 1), f"{where}.grace_period", 0, max_t, True)
    spec = SchedulerSpec(
        kind=kind,
        time_attr=time_attr,
        max_t=max_t,
        grace_period=grace,
        reduction_factor=_number(
            raw.get("reduction_factor", 4 if kind == "asha" else 3), f"{where}.reduction_factor", 1, 100, True
        ),
        perturbation_interval=_int(
            raw.get("perturbation_interval", 1), f"{where}.perturbation_interval", 1, 100_000
        ),
        burn_in_period=_int(raw.get("burn_in_period", 0), f"{where}.burn_in_period", 0, 100_000),
        hyperparam_mutations=_parse_mutations(raw.get("hyperparam_mutations"), kind),
        quantile_fraction=_number(
            raw.get("quantile_fraction", 0.25), f"{where}.quantile_fraction", 0, 0.5, True, closed_high=True
        ),
        resample_probability=_number(
            raw.get("resample_probability", 0.25), f"{where}.resample_probability", 0, 1, closed_high=True
        ),
        synch=_bool(raw.get("synch", False), f"{where}.synch"),
    )
    return spec


def _parse_mutations(raw: Any, kind: str) -> dict[str, SearchDomain]:
    where = "sweep.scheduler.hyperparam_mutations"
    if kind != "pbt":
        return {}
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(
            f"{where}: PBT needs a non-empty mapping of dotted keys to values or ranges, e.g. "
            "{training.lr: {loguniform: [1.0e-4, 1.0e-2]}}"
        )
    mutations = {}
    for key, value in raw.items():
        if str(key) not in PBT_MUTABLE_KEYS:
            raise ConfigError(
                f"{where}.{key}: PBT can only mutate keys the server reads every round, {list(PBT_MUTABLE_KEYS)}; "
                "others (ranks, pruning, bandit settings) are restored from the checkpoint a trial clones"
            )
        mutations[str(key)] = _parse_domain(str(key), value, where=f"{where}.{key}")
    return mutations


def _parse_search_alg(raw: Any) -> SearchAlgSpec | None:
    """``search_alg: optuna`` or ``{type: optuna, seed: 0}``; the package must be installed (the hpo extra)."""
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"type": raw}
    where = "sweep.search_alg"
    if not isinstance(raw, Mapping) or raw.get("type") not in SEARCH_ALG_PACKAGES:
        kind = raw.get("type") if isinstance(raw, Mapping) else raw
        raise ConfigError(f"{where}.type: expected one of {list(SEARCH_ALG_PACKAGES)}, got {kind!r}")
    unknown = sorted(set(raw) - {"type", "seed"})
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown field; the fields are ['type', 'seed']")
    kind = str(raw["type"])
    package = SEARCH_ALG_PACKAGES[kind]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"{where}: {kind!r} needs the {package} package; fix: {HPO_EXTRA}")
    seed = raw.get("seed")
    if seed is not None:
        seed = _int(seed, f"{where}.seed", 0, 2**31 - 1)
    return SearchAlgSpec(kind, seed)


def _parse_stop(raw: Any) -> dict[str, float]:
    """``stop: {round: 5}``: Tune stops a trial once a reported value reaches (>=) its threshold."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(
            f"sweep.stop: expected a mapping of reported columns to thresholds, e.g. {{round: 5}}; got {raw!r}"
        )
    stop = {}
    for key, value in raw.items():
        if key not in FINAL_COLUMNS:
            raise ConfigError(f"sweep.stop.{key}: not a reported column; choose one of {list(FINAL_COLUMNS)}")
        stop[str(key)] = _number(value, f"sweep.stop.{key}", -math.inf, math.inf)
    return stop


def _time_budget(value: Any) -> float | None:
    if value is None:
        return None
    return _number(value, "sweep.time_budget_s", 0, math.inf, True)


def _validate_tuning(spec: SweepSpec) -> None:
    """Rules between the scheduler, the search algorithm and the trials' configs, checked before Ray starts."""
    if spec.search_alg is not None:
        grids = [k for k, d in spec.search_space.items() if d.kind == "grid"]
        if grids:
            raise ConfigError(
                f"sweep.search_space.{grids[0]}: a grid (a plain list) cannot be searched by "
                f"search_alg {spec.search_alg.kind!r}; fix: write {{choice: [...]}} or a range"
            )
        if spec.variants:
            raise ConfigError(
                f"sweep.variants: variants are a grid, which search_alg {spec.search_alg.kind!r} cannot walk; "
                "fix: one sweep per variant, or drop search_alg"
            )
        if not spec.search_space:
            raise ConfigError("sweep.search_space: search_alg needs values to search")
    scheduler = spec.scheduler
    if scheduler is None:
        return
    if scheduler.kind == "pbt" and spec.search_alg is not None:
        raise ConfigError("sweep.search_alg: PBT explores by mutating trials itself; fix: drop search_alg")
    for key, domain in scheduler.hyperparam_mutations.items():
        for value in domain.values:
            _check_override(spec.base_config(), {key: value}, where="sweep.scheduler.hyperparam_mutations")
    bases = [("sweep.overrides", spec.base_config())]
    bases += [
        (f"sweep.variants.{name}", spec.base_config().with_overrides(o)) for name, o in spec.variants.items()
    ]
    swept = spec.search_space.get("training.eval_every")
    evals = [(where, c.training.eval_every) for where, c in bases]
    evals += [("sweep.search_space.training.eval_every", v) for v in (swept.values if swept else [])]
    for where, every in evals:
        if every != 1:
            raise ConfigError(
                f"{where}: the {scheduler.kind} scheduler compares trials' test metrics after every round, but "
                f"training.eval_every is {every} (the rounds in between have none); fix: set "
                "training.eval_every: 1, or drop the scheduler"
            )
    if not scheduler.uses_checkpoints:
        return
    for where, config in bases:
        every = config.runtime.checkpoint_every
        if scheduler.kind == "hyperband" and every != 1:
            raise ConfigError(
                f"{where}: the hyperband scheduler pauses trials at its rungs and resumes them from their last "
                f"checkpoint, but runtime.checkpoint_every is {every}; fix: set runtime.checkpoint_every: 1"
            )
        if scheduler.kind == "pbt" and (every < 1 or scheduler.perturbation_interval % every):
            raise ConfigError(
                f"{where}: PBT clones trials from the checkpoint of the round it decides at (every "
                f"perturbation_interval={scheduler.perturbation_interval} rounds), but runtime.checkpoint_every "
                f"is {every}; fix: set runtime.checkpoint_every to a divisor of the interval, e.g. 1"
            )


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


def _check_override(
    base: ExperimentConfig, params: Mapping[str, Any], where: str = "sweep.search_space"
) -> None:
    try:
        trial = base.with_overrides(params)
        if any(key.split(".")[0] in _INPUT_SECTIONS for key in params):
            check_inputs(trial)
    except ConfigError as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        raise ConfigError(f"{where}.{exc} (trial with {shown})") from None


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


def _number(
    value: Any, where: str, low: float, high: float, open_low: bool = False, closed_high: bool = True
) -> float:
    """A finite number in ``[low, high]`` (``(low, ...`` with ``open_low``; ``..., high)`` without
    ``closed_high``)."""
    ok = _is_number(value) and (value > low if open_low else value >= low)
    ok = ok and (value <= high if closed_high else value < high)
    if not ok:
        left, right = "(" if open_low else "[", "]" if closed_high else ")"
        raise ConfigError(f"{where}: expected a number in {left}{low:g}, {high:g}{right}, got {value!r}")
    return float(value)


def _trial_cpus(value: Any) -> float:
    if not _is_number(value) or not 0 < value <= 64:
        raise ConfigError(
            f"sweep.trial_cpus: expected a number in (0, 64], got {value!r} (Ray rejects 0; the "
            "federated run's own actors carry the real load)"
        )
    return float(value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


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
