"""Running a sweep with Ray Tune: one Tune trial = one full federated run (:mod:`.sweep_spec` says what).

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

import json
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fedspine_ray.config import ConfigError
from fedspine_ray.launch.files import atomic_write
from fedspine_ray.launch.ray_session import ensure_ray, local_custom_resources
from fedspine_ray.launch.sweep_spec import (
    FINAL_COLUMNS,
    RUNS_SUBDIR,
    TRIAL_FILE,
    TRIALS_FILE,
    VARIANT_KEY,
    SweepSpec,
)

log = logging.getLogger("fedspine_ray.sweep")


def run_trial(params: dict[str, Any], spec: SweepSpec) -> None:
    """Tune function trainable: run one federated experiment and report every round to Tune.

    Lives at module level so Ray pickles it by reference. The run uses the Ray the trial already runs
    in (``run_experiment`` does not start or stop Ray when one is connected).
    """
    from ray import tune

    from fedspine_ray.launch.checkpoint_files import CHECKPOINT_FILE
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
    from fedspine_ray.devices.population import build_client_devices

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
    return ensure_ray(address, local_custom_resources(trial_devices(spec)), quiet)


def trial_devices(spec: SweepSpec) -> list[Any]:
    """The ``devices`` section of the base, of every variant and of every ``devices.*`` value searched."""
    base = spec.base_config()
    sections = [base.devices]
    for key, domain in spec.search_space.items():
        if key.startswith("devices.") and domain.kind in ("grid", "choice"):
            sections += [base.with_overrides({key: value}).devices for value in domain.values]
    sections += [base.with_overrides(overrides).devices for overrides in spec.variants.values()]
    return sections


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


def check_resumable(spec: SweepSpec) -> None:
    """``--resume`` needs Tune's state of an earlier start of this sweep; fail before Ray starts without it."""
    from ray.tune import Tuner

    if not Tuner.can_restore(str(spec.sweep_dir)):
        raise ConfigError(
            f"--resume: {spec.sweep_dir} holds no Tune experiment state to resume; fix: run the sweep without "
            "--resume first, with the same name and storage_path (--storage-path)"
        )
