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
    check_prunable_model(config)
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


def check_prunable_model(config: ExperimentConfig) -> None:
    """A method that prunes gets a model family the pruning engine can prune.

    Read from the model's ``config.json``, or a GGUF header's ``general.architecture`` mapped to its
    transformers ``model_type`` (:mod:`fedspine_ray.modeling.model_info`, torch-free), and judged by
    ``pruning.architectures.check_prunable_config``: an unsupported decoder fails here in one line naming the
    supported families and how to run the unpruned methods, not inside the server after Ray started. Pruning
    methods are every method but fedit, hetlora and flexlora, and those with ``method.prune_global: true``.
    """
    from fedspine_ray.modeling.model_info import model_config_dict
    from fedspine_ray.modeling.paths import locate_model_file
    from fedspine_ray.pruning.architectures import UnsupportedArchitectureError, check_prunable_config

    method = config.method
    if method.name in ("fedit", "hetlora", "flexlora") and method.prune_global is not True:
        return
    try:
        model_config = model_config_dict(locate_model_file(config.model.path))
    except (OSError, ValueError) as exc:
        raise ConfigError(_one_line(f"cannot read the model's config ({exc})", "model.path")) from None
    try:
        check_prunable_config(model_config)
    except UnsupportedArchitectureError as exc:
        raise ConfigError(f"model.path: method {method.name!r} prunes the model, but {exc}") from None


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
    check_data_contents(config)


def check_data_contents(config: ExperimentConfig) -> None:
    """The data files hold what the run needs, and ``task.label_words`` names every label.

    Reads the ``files`` source's files (cheap next to a Ray start; ``data.sources.check_files`` says what is
    checked: readable, rows, columns, at least two classes, test labels the training file has). Another
    source is loaded only to check ``task.label_words`` against its labels.
    """
    from fedspine_ray.data.sources import check_files, label_names

    data, task = config.data, config.task
    labels: list[str] | None = None
    if data.source == "files" and data.train_path is not None:
        if task.instruction:
            needed = {
                "task.instruction_column": task.instruction_column,
                "task.output_column": task.output_column,
            }
            check_files(data, needed, None)
        else:
            needed = {"data.text_column": data.text_column, "data.label_column": data.label_column}
            labels = check_files(data, needed, data.label_column)
    if task.kind != "causal_lm" or task.instruction or not task.label_words:
        return
    labels = label_names(data, config.seed) if labels is None else labels
    unknown = sorted(set(task.label_words) - set(labels))
    missing = [name for name in labels if name not in task.label_words]
    if unknown or missing:
        raise ConfigError(
            f"task.label_words: must map every label {labels} to a word (unknown: {unknown}, missing: "
            f"{missing}); fix: give each label of the data an answer word, or set label_words: {{}} to use "
            "the label names"
        )


def check_run_dir(output_dir: str | Path, overwrite: bool = False) -> None:
    """A new run must not silently replace another run's results (``fedspine run``, not ``--resume``).

    A directory holding rounds.parquet, clients.parquet, summary.json or a checkpoint is refused unless
    ``overwrite`` (``--overwrite``), which removes those files first: nothing of the earlier run (a stale
    checkpoint a later ``--resume`` would pick up, its summary) is mixed into the new one. Sweep trials and
    ``--resume`` write into their directories on purpose and do not come here.
    """
    from fedspine_ray.launch.checkpoint_files import CHECKPOINT_FILE, CHECKPOINT_INFO_FILE
    from fedspine_ray.launch.results import CLIENTS_FILE, ROUNDS_FILE, SUMMARY_FILE, VERSIONS_FILE

    output_dir = Path(output_dir)
    results = (ROUNDS_FILE, CLIENTS_FILE, SUMMARY_FILE, CHECKPOINT_FILE)
    held = [name for name in results if (output_dir / name).is_file()]
    if not held:
        return
    if not overwrite:
        raise ConfigError(
            f"output_dir: {output_dir} already holds a run's results ({', '.join(held)}); fix: pass --overwrite "
            f"to replace them, --output-dir (or --set name=...) for a new directory, or --resume {output_dir} "
            "to continue that run"
        )
    for name in (*held, CHECKPOINT_INFO_FILE, VERSIONS_FILE):
        (output_dir / name).unlink(missing_ok=True)


def check_server(config: ExperimentConfig) -> None:
    """``server.backend: deepspeed`` needs DeepSpeed installed where the server actor runs."""
    server = getattr(config, "server", None)
    if server is not None and server.backend == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "server.backend: 'deepspeed' needs the deepspeed package; fix: DS_BUILD_OPS=0 pip install "
            "'fedspine-ray[deepspeed]' (or deepspeed==0.19.8)"
        )


def gpu_request(config: ExperimentConfig) -> tuple[str, float] | None:
    """The field asking one process of the run for the most GPUs, and how many (None: no GPU anywhere).

    Client classes say it in their profile's ``ray_num_gpus`` (``devices.mix``) or in
    ``clients.resources[].num_gpus``; the server (each ZeRO rank) in ``server.num_gpus``.
    """
    from fedspine_ray.devices.profiles import load_device_profiles

    asks: list[tuple[float, str]] = [(config.server.num_gpus, "server.num_gpus")]
    if config.devices.mix:
        profiles = load_device_profiles(config.devices.profiles_path)
        asks += [
            (profiles[name].ray_num_gpus, f"devices.mix: class {name!r} (ray_num_gpus)")
            for name in config.devices.mix
            if name in profiles
        ]
    else:
        asks += [
            (spec.num_gpus, f"clients.resources[{i}].num_gpus")
            for i, spec in enumerate(config.clients.resources)
        ]
    amount, field_name = max(asks, key=lambda ask: ask[0])
    return (field_name, amount) if amount > 0 else None


def local_gpus() -> tuple[int, str]:
    """GPUs an embedded local Ray would see on this machine, and why none when 0; torch is not imported.

    The NVIDIA driver lists its GPUs in ``/proc/driver/nvidia/gpus`` (``nvidia-smi -L`` where /proc is not
    the host's); ``CUDA_VISIBLE_DEVICES`` narrows them as Ray does; the torch installed must be a CUDA build
    (``torch/version.py`` names its CUDA version, ``None`` for CPU wheels).
    """
    import os
    import shutil
    import subprocess

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0, f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    listed = Path("/proc/driver/nvidia/gpus")
    count = len(list(listed.iterdir())) if listed.is_dir() else 0
    if count == 0 and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        count = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    if count == 0:
        return 0, "no NVIDIA GPU on this machine (no /proc/driver/nvidia/gpus, no nvidia-smi GPU)"
    if visible is not None:
        count = min(count, len([d for d in visible.split(",") if d.strip()]))
    spec = importlib.util.find_spec("torch")
    version = Path(spec.origin).parent / "version.py" if spec and spec.origin else None
    text = version.read_text() if version is not None and version.is_file() else ""
    if "cuda: Optional[str] = None" in text or "cuda = None" in text or not text:
        return 0, f"{count} GPU(s) here but the installed torch is a CPU build"
    return count, ""


def check_gpus(config: ExperimentConfig, address: str | None) -> None:
    """A run asking for GPUs on an embedded local Ray fails here, before Ray starts, when this machine has none.

    With ``--address`` the cluster's nodes matter, not this machine's: :func:`fedspine_ray.launch.ray_session.
    ensure_ray` checks ``ray.cluster_resources()`` right after connecting, before any actor exists.
    """
    need = gpu_request(config)
    if need is None or address is not None:
        return
    field_name, amount = need
    count, why = local_gpus()
    if count == 0:
        raise ConfigError(
            f"{field_name} asks for {amount:g} GPU per process, but {why}; fix: run on a GPU machine, join a "
            "cluster with GPU nodes (--address), or ask for 0 GPUs"
        )


def _one_line(message: str, field_name: str) -> str:
    text = " ".join(message.split())
    return text if text.startswith(f"{field_name}:") else f"{field_name}: {text}"
