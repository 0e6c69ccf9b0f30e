"""Running a sweep with Ray Tune: one Tune trial = one full federated run (:mod:`.sweep_spec` says what).

Resources: a trial only *drives* a federated run, whose server actor (``num_cpus=0``, plus ``server.num_gpus``)
and client processes (fractional CPUs, memory and device-class resources from the config) are separate Ray
actors. Tune runs every trial inside a placement group and Ray places the actors a trial creates *inside that
group*, so the group is sized to what the run really starts: a tiny head bundle for the trial itself
(``trial_cpus``, default 0.01: Ray refuses an empty request), a bundle with the server's GPUs when it asks
for any, and one bundle per client process: one per client when the run places its clients ``dedicated``,
one per pool worker when ``pooled`` (the same rules the server applies, :mod:`fedspine_ray.devices.placement`).
Tune then starts a trial only when its whole run fits, and ``max_concurrent_trials`` (default 1) keeps
concurrent runs from competing for a small box's cores and distorting wall-clock numbers.

Checkpoints: a run that writes ``checkpoint.pt`` (``runtime.checkpoint_every``) hands each one to Tune as a
:class:`ray.tune.Checkpoint` holding the checkpoint and the run's tables up to that round. A trial Tune starts
with a checkpoint (a crashed trial retried under ``max_failures``, a trial HyperBand paused, a trial PBT
replaces by a clone of a better one, a trial of a ``--resume``\\ d sweep) copies those files into its run
directory and continues from there.

Outputs under ``<storage_path>/<name>/``: Tune's own experiment state, ``runs/<trial_id>/`` (each trial's
normal run directory: rounds.parquet, clients.parquet, config.yaml, ...) and ``trials.parquet`` (one row per
trial: its parameters and final metrics). See docs/sweeps.md.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fedspine_ray.config import ConfigError
from fedspine_ray.launch.checkpoint_files import (
    CHECKPOINT_FILE,
    RUN_STATE_FILES,
    checkpoint_round,
    validate_checkpoint,
)
from fedspine_ray.launch.files import atomic_write
from fedspine_ray.launch.ray_session import ensure_ray, local_custom_resources
from fedspine_ray.launch.results import CONFIG_FILE
from fedspine_ray.launch.sweep_spec import (
    FINAL_COLUMNS,
    RUNS_SUBDIR,
    TRIAL_FILE,
    TRIALS_FILE,
    VARIANT_KEY,
    SweepSpec,
)

log = logging.getLogger("fedspine_ray.sweep")

#: Reported with every round: True on the round the run ends by itself (its last round, or the one that spent
#: its simulated-time budget). A trial whose last report lacks it was stopped by Tune (a scheduler, ``stop``
#: or ``time_budget_s``): the ``stopped_early`` column of trials.parquet.
RUN_COMPLETE = "run_complete"
#: Under a remote storage URI a trial's run directory is this folder of its Tune trial directory (uploaded
#: with Tune's artifacts).
REMOTE_RUN_SUBDIR = "run"
#: Tune checkpoints kept per trial: PBT clones other trials' older checkpoints (it warns below 3).
CHECKPOINTS_TO_KEEP = 1
PBT_CHECKPOINTS_TO_KEEP = 4


def run_trial(params: dict[str, Any], spec: SweepSpec) -> None:
    """Tune function trainable: run one federated experiment and report every round to Tune.

    Lives at module level so Ray pickles it by reference. The run uses the Ray the trial already runs
    in (``run_experiment`` does not start or stop Ray when one is connected). A checkpoint Tune hands the
    trial (``tune.get_checkpoint()``) is unpacked into the run directory and the run continues from it;
    without one, a ``checkpoint.pt`` an earlier attempt left in the run directory is used (a trial cut off by a
    killed sweep, ``fedspine sweep --resume``).
    """
    from ray import tune

    from fedspine_ray.runner import run_experiment

    context = tune.get_context()
    trial_id = context.get_trial_id()
    output_dir, shown_dir = _trial_run_dir(spec, trial_id, Path(context.get_trial_dir()))
    config = spec.trial_config(params, output_dir)
    resumed, source = _restore(tune.get_checkpoint(), output_dir)
    trial = {
        "trial_id": trial_id,
        VARIANT_KEY: params.get(VARIANT_KEY),
        "params": dict(params),
        "pid": os.getpid(),
        "resumed_after_round": resumed,
        "resumed_from": source,
    }
    atomic_write(output_dir / TRIAL_FILE, lambda tmp: tmp.write_text(json.dumps(trial, default=str)))
    budget: list[float | None] = []  # training.max_sim_time_s once set-up resolved it (config.yaml)
    last: list[dict[str, Any]] = []

    def report(row: dict[str, Any]) -> None:
        if not budget:
            budget.append(_resolved_budget(output_dir))
        complete = row["round"] >= config.training.rounds or (
            budget[0] is not None and row["sim_time_s"] >= budget[0]
        )
        if complete:  # reported once the run has finished (summary.json written, actors shut down): a
            last.append(row)  # scheduler that stops the trial at its last round (max_t) cannot cut that off
            return
        _report_round(row, output_dir, shown_dir, complete=False)

    run_experiment(config, progress=False, quiet=True, on_round=report, resume=resumed is not None)
    for row in last:
        _report_round(row, output_dir, shown_dir, complete=True)


def _report_round(row: dict[str, Any], output_dir: Path, shown_dir: str, complete: bool) -> None:
    """``tune.report`` of one round row, with a Tune checkpoint when the run wrote one after this round."""
    from ray import tune

    metrics = {**_loggable(row), "output_dir": shown_dir, RUN_COMPLETE: complete}
    if row["round"] > 0 and checkpoint_round(output_dir) == row["round"]:
        with tune_checkpoint(output_dir) as checkpoint:
            tune.report(metrics, checkpoint=checkpoint)
    else:
        tune.report(metrics)


def _trial_run_dir(spec: SweepSpec, trial_id: str, tune_trial_dir: Path) -> tuple[Path, str]:
    """``(local run directory, how trials.parquet names it)``: ``<sweep>/runs/<trial_id>`` on local storage;
    under a remote URI a folder of the Tune trial directory, synced to ``<uri>/<name>/<trial dir>/run``."""
    if spec.remote_storage:
        local = tune_trial_dir / REMOTE_RUN_SUBDIR
        return local, f"{spec.location}/{tune_trial_dir.name}/{REMOTE_RUN_SUBDIR}"
    local = spec.sweep_dir / RUNS_SUBDIR / trial_id
    return local, str(local)


def _restore(checkpoint: Any, output_dir: Path) -> tuple[int | None, str | None]:
    """Put the files of the checkpoint Tune gave the trial into its run directory: ``(round, source)``, the
    round to resume after and where it came from (``tune``, ``run_dir``), or ``(None, None)`` for round 0.

    A checkpoint comes with the run's tables up to its round, so a trial that continues another trial's
    checkpoint (PBT) carries that trial's history, as PBT means it to.
    """
    if checkpoint is not None:
        with checkpoint.as_directory() as source:
            output_dir.mkdir(parents=True, exist_ok=True)
            for name in RUN_STATE_FILES:
                if (Path(source) / name).is_file():
                    atomic_write(
                        output_dir / name, lambda tmp, n=name: shutil.copyfile(Path(source) / n, tmp)
                    )
        return validate_checkpoint(output_dir), "tune"
    if (output_dir / CHECKPOINT_FILE).is_file():
        return validate_checkpoint(output_dir), "run_dir"
    return None, None


@contextmanager
def tune_checkpoint(run_dir: Path) -> Iterator[Any]:
    """A :class:`ray.tune.Checkpoint` of the run directory's state at its checkpoint: checkpoint.pt and
    checkpoint.json, and the tables and config a continuation needs. Files are hard-linked into a temporary
    folder (the run replaces them by rename, so the links keep this round's versions); Tune copies the folder
    into its storage inside ``tune.report``, after which it is removed."""
    from ray import tune

    with tempfile.TemporaryDirectory(prefix=".tune-checkpoint-", dir=run_dir) as folder:
        for name in RUN_STATE_FILES:
            source = run_dir / name
            if source.is_file():
                try:
                    os.link(source, Path(folder) / name)
                except OSError:  # another filesystem, or links not supported
                    shutil.copyfile(source, Path(folder) / name)
        yield tune.Checkpoint.from_directory(folder)


def _resolved_budget(run_dir: Path) -> float | None:
    """``training.max_sim_time_s`` of the run's config.yaml (set-up resolves ``sim_time_budget_fedit_rounds``
    into it before round 0 is reported)."""
    try:
        value = (yaml.safe_load((run_dir / CONFIG_FILE).read_text())["training"] or {}).get("max_sim_time_s")
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def _loggable(row: Mapping[str, Any]) -> dict[str, Any]:
    """Round-row values Tune can log (numbers and strings); anything else becomes JSON text."""
    return {
        k: v if isinstance(v, (numbers.Number, str)) else json.dumps(v, default=str) for k, v in row.items()
    }


def run_sweep(
    spec: SweepSpec,
    address: str | None = None,
    quiet: bool = False,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
) -> pd.DataFrame:
    """Run every trial of ``spec`` with Ray Tune and return the trials table (also saved as Parquet).

    ``address`` joins a running cluster (``"auto"``); otherwise an already-initialised Ray is used, or an
    embedded local Ray is started (with the device-class custom resources the trials need) and stopped.
    ``resume`` continues an interrupted sweep from Tune's state in ``spec.location`` (``Tuner.restore``):
    finished trials are kept, not run again; unfinished and errored ones run (from their last checkpoint
    when they have one), and a search algorithm continues from its saved state. ``callbacks`` are extra Tune
    callbacks (loggers such as W&B or MLflow) of a new sweep; a restored sweep keeps the ones it started with.
    """
    import ray
    from ray import tune

    # Every checkpoint a trial reports makes Tune save its experiment state (CheckpointConfig.num_to_keep), which
    # is what a resumed sweep needs; Tune warns about it every few seconds unless told otherwise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started = _ensure_ray(spec, address, quiet)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, spec=spec), lambda params: trial_placement(spec, params)
        )
        if resume:
            tuner = tune.Tuner.restore(spec.location, trainable=trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space(spec),
                tune_config=tune_config(spec),
                run_config=run_config(spec, quiet, callbacks),
            )
        grid = tuner.fit()
        table = trials_table(grid, spec)
    finally:
        if started:
            ray.shutdown()
    path = write_trials_table(spec, table)
    log.info("sweep %s: %d trials -> %s", spec.name, len(table), path)
    return table


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Tune's ``param_space``: the search space's domains, and the variants as a grid."""
    from ray import tune

    space = {key: domain.to_tune() for key, domain in spec.search_space.items()}
    if spec.variants:
        space[VARIANT_KEY] = tune.grid_search(list(spec.variants))
    return space


def tune_config(spec: SweepSpec) -> Any:
    """``TuneConfig``: metric and mode (for schedulers, searchers and ``get_best_result``), the scheduler, the
    search algorithm, samples, concurrency and the time budget."""
    from ray import tune

    return tune.TuneConfig(
        metric=spec.metric,
        mode=spec.mode,
        scheduler=spec.scheduler.to_tune() if spec.scheduler else None,
        search_alg=spec.search_alg.to_tune() if spec.search_alg else None,
        num_samples=spec.num_samples,
        max_concurrent_trials=spec.max_concurrent_trials,
        time_budget_s=spec.time_budget_s,
    )


def run_config(spec: SweepSpec, quiet: bool = False, callbacks: Sequence[Any] = ()) -> Any:
    """``RunConfig``: the storage (a URI passed through as given, a local path made absolute), retries,
    checkpoints kept, stop criteria; with remote storage the trials' run directories are uploaded as
    Tune artifacts."""
    from ray import tune

    pbt = spec.scheduler is not None and spec.scheduler.kind == "pbt"
    return tune.RunConfig(
        name=spec.name,
        storage_path=spec.storage,
        verbose=0 if quiet else 1,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=PBT_CHECKPOINTS_TO_KEEP if pbt else CHECKPOINTS_TO_KEEP
        ),
        sync_config=tune.SyncConfig(sync_artifacts=spec.remote_storage),
        stop=dict(spec.stop) or None,
        callbacks=list(callbacks) or None,
    )


def trial_bundles(
    spec: SweepSpec, params: Mapping[str, Any], available: Mapping[str, float] | None = None
) -> list[dict[str, float]]:
    """Resource bundles of one trial: its own head bundle, the server's GPUs (one bundle per ZeRO rank actor
    with ``server.num_ranks`` > 1), then one per client process (with its GPUs when its class asks for any).

    Client processes are those the run will start: ``clients.placement`` resolved and pools sized exactly as
    the server does (:func:`fedspine_ray.devices.placement.client_processes`) from ``available``, the
    cluster's total resources (default: ``ray.cluster_resources()``, or this machine's CPUs before Ray
    started). Each bundle holds what that actor asks Ray for (device profile options, else
    ``clients.resources``), because those actors must fit inside the trial's placement group.
    """
    from fedspine_ray.devices.placement import client_processes
    from fedspine_ray.devices.population import build_client_devices

    config = spec.trial_config(params)
    resources = _cluster_resources() if available is None else available
    devices = build_client_devices(config)
    _, processes = client_processes(devices, config.clients.placement, config.clients.pool_size, resources)
    bundles = [{"CPU": spec.trial_cpus}]
    if config.server.num_gpus > 0:  # the server actor (or each ZeRO rank actor): num_cpus=0 plus its GPUs
        bundles += [{"GPU": float(config.server.num_gpus)} for _ in range(config.server.num_ranks)]
    for device in processes:
        options = device.actor_options()
        bundle = {"CPU": float(options["num_cpus"]), "memory": float(options["memory"])}
        bundle.update({name: float(amount) for name, amount in options.get("resources", {}).items()})
        if options.get("num_gpus"):  # GPU clients (a class's ray_num_gpus, clients.resources[].num_gpus)
            bundle["GPU"] = float(options["num_gpus"])
        bundles.append(bundle)
    return bundles


def _cluster_resources() -> dict[str, float]:
    """What the server will read when it creates the clients: the connected cluster's resources, else what a
    local Ray started here would have."""
    import ray

    if ray.is_initialized():
        return dict(ray.cluster_resources())
    return {"CPU": float(os.cpu_count() or 1)}


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
    """One row per trial: ``trial_id``, its parameters, status/error, whether Tune stopped it early, final and
    best metric values and where its run directory is."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        history = result.metrics_dataframe
        row: dict[str, Any] = {"trial_id": metrics.get("trial_id") or _trial_id_from_path(result.path)}
        output_dir = metrics.get("output_dir") or _default_run_dir(spec, row["trial_id"])
        config = {**_recorded_params(Path(output_dir)), **(result.config or {})}
        row.update({key: config.get(key) for key in spec.param_keys})
        row["status"] = "error" if result.error is not None else "ok"
        row["error"] = None if result.error is None else _error_summary(result.error)
        # a trial that reported rounds but not its run's last one was stopped by Tune (scheduler / stop)
        row["stopped_early"] = bool(
            result.error is None and metrics.get("round") is not None and not metrics.get(RUN_COMPLETE, False)
        )
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


def _default_run_dir(spec: SweepSpec, trial_id: str) -> str | None:
    return None if spec.remote_storage else str(spec.sweep_dir / RUNS_SUBDIR / trial_id)


def trials_location(spec: SweepSpec) -> str:
    """Where trials.parquet goes: ``<sweep_dir>/trials.parquet``, or ``<uri>/<name>/trials.parquet``."""
    if spec.remote_storage:
        return f"{spec.location}/{TRIALS_FILE}"
    return str(spec.sweep_dir / TRIALS_FILE)


def write_trials_table(spec: SweepSpec, table: pd.DataFrame) -> str:
    """Write trials.parquet into the sweep's directory (atomically), or upload it to a remote storage URI
    (through pyarrow's filesystems, as Tune writes its own state there)."""
    location = trials_location(spec)
    if not spec.remote_storage:
        atomic_write(Path(location), lambda tmp: table.to_parquet(tmp, index=False))
        return location
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(location)
    with filesystem.open_output_stream(path) as stream:
        table.to_parquet(stream, index=False)
    return location


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

    if not Tuner.can_restore(spec.location):
        raise ConfigError(
            f"--resume: {spec.location} holds no Tune experiment state to resume; fix: run the sweep without "
            "--resume first, with the same name and storage_path (--storage-path)"
        )
