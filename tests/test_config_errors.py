"""Broken configs, tried as a new user would: each is a one-line ``field: problem`` error, exit code 2, and
Ray is never started (issue 10, part 3).

Most cases go through :func:`fedspine_ray.cli.main` in this process (a fresh interpreter per case would
cost seconds each); two go through the real CLI module in a subprocess, which also proves Ray was not
even imported.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedspine_ray.cli import EXIT_CONFIG_ERROR, main

PREFIX = "fedspine: config error: "


def _files(train: str, test: str | None = None) -> str:
    """YAML of ``data.source: files`` reading ``{tmp}/<train>`` (and ``{tmp}/<test>``), see ``workdir``."""
    test_path = f", test_path: '{{tmp}}/{test}'" if test else ""
    return f"data: {{source: files, train_path: '{{tmp}}/{train}'{test_path}}}"


#: (case id, YAML text or None for the shipped default, extra CLI args, the field the error must name).
#: ``{tmp}`` is replaced by the ``workdir`` fixture's directory (data files, run directories, an empty model/).
CASES: list[tuple[str, str | None, list[str], str]] = [
    ("model-path-missing-dir", "model: {path: /nonexistent/model}", [], "model.path"),
    ("model-path-no-config-json", "model: {path: '{tmp}/model'}", [], "model.path"),
    ("model-path-package-missing", "model: {path: 'package:no_such_pkg_xyz/model'}", [], "model.path"),
    ("model-path-gguf-missing", "model: {path: /nonexistent/model.Q4_1.gguf}", [], "model.path"),
    ("model-path-empty", "model: {path: ''}", [], "model.path"),
    ("data-source-unknown", "data: {source: tweets_v2}", [], "data.source"),
    ("data-files-without-train-path", "data: {source: files}", [], "data.train_path"),
    (
        "data-train-path-missing",
        "data: {source: files, train_path: /nonexistent/train.csv}",
        [],
        "data.train_path",
    ),
    (
        "data-test-path-missing",
        "data: {source: files, train_path: '{tmp}/train.csv', test_path: /nonexistent/test.csv}",
        [],
        "data.test_path",
    ),
    (
        "data-train-path-bad-type",
        "data: {source: files, train_path: '{tmp}/notes.txt'}",
        [],
        "data.train_path",
    ),
    ("yaml-syntax-error", "training:\n  rounds: 3\n lr: [\n", [], "config"),
    ("yaml-tab-indent", "training:\n\trounds: 3\n", [], "config"),
    ("yaml-not-a-mapping", "- rounds\n- 3\n", [], "config"),
    ("config-file-missing", None, ["{tmp}/no_such_config.yaml"], "config"),
    ("unknown-top-level-field", "trainig: {rounds: 3}", [], "trainig"),
    ("unknown-nested-field", "training: {epochs: 3}", [], "training.epochs"),
    ("wrong-type-int", "training: {rounds: three}", [], "training.rounds"),
    ("out-of-range-lr", "training: {lr: 5}", [], "training.lr"),
    ("time-budget-not-positive", "training: {max_sim_time_s: 0}", [], "training.max_sim_time_s"),
    ("eval-every-zero", "training: {eval_every: 0}", [], "training.eval_every"),
    (
        "fill-budget-without-time-model",
        "rounds: {fill: true, time_model: false}",
        [],
        "rounds.fill",
    ),
    ("lora-rank-zero", "lora: {rank: 0}", [], "lora.rank"),
    ("literal-partition-kind", "partition: {kind: zipf}", [], "partition.kind"),
    (
        "clients-per-round-too-many",
        "clients: {num_clients: 4, clients_per_round: 9}",
        [],
        "clients.clients_per_round",
    ),
    ("method-unknown", "method: {name: fedprox}", [], "method.name"),
    ("aggregation-unknown", "method: {aggregation: median}", [], "method.aggregation"),
    ("importance-unknown", "pruning: {importance: random}", [], "pruning.importance"),
    ("sparsity-out-of-range", "pruning: {target_sparsity: 1.5}", [], "pruning.target_sparsity"),
    ("device-class-unknown", "devices: {mix: {iphone: 1.0}}", [], "devices.mix"),
    ("deadline-without-seconds", "rounds: {end: deadline}", [], "rounds.deadline_s"),
    ("moved-field", "bandit: {fill_budget: true}", [], "bandit.fill_budget"),
    ("moved-field-set", None, ["--set", "devices.round_policy=deadline"], "devices.round_policy"),
    ("bandit-ratio-out-of-range", "bandit: {pruning_ratios: [1.5]}", [], "bandit.pruning_ratios"),
    ("set-unknown-key", None, ["--set", "training.nope=3"], "training.nope"),
    ("set-bad-yaml-value", None, ["--set", "training.lr=["], "--set training.lr"),
    ("set-without-equals", None, ["--set", "training.rounds"], "--set 'training.rounds'"),
    ("server-backend-unknown", "server: {backend: jax}", [], "server.backend"),
    ("server-zero-stage", "server: {backend: deepspeed, zero_stage: 1}", [], "server.zero_stage"),
    ("server-offload-needs-deepspeed", "server: {backend: torch, offload: cpu}", [], "server.offload"),
    ("server-eval-dtype-unknown", "server: {eval_dtype: float16}", [], "server.eval_dtype"),
    (
        "server-eval-dtype-bf16-under-deepspeed",
        "server: {backend: deepspeed, eval_dtype: bfloat16}",
        [],
        "server.eval_dtype",
    ),
    # issue 25: data files the run could not use, found before Ray starts by reading them
    ("csv-without-label-column", _files("nolabel.csv"), [], "data.label_column"),
    ("csv-without-text-column", _files("notext.csv"), [], "data.text_column"),
    ("csv-empty", _files("empty.csv"), [], "data.train_path"),
    ("csv-header-only", _files("header.csv"), [], "data.train_path"),
    ("csv-no-complete-row", _files("blanklabels.csv"), [], "data.train_path"),
    ("jsonl-truncated-line", _files("truncated.jsonl"), [], "data.train_path"),
    ("parquet-not-parquet", _files("fake.parquet"), [], "data.train_path"),
    ("test-file-empty", _files("train.csv", "header.csv"), [], "data.test_path"),
    ("test-labels-not-in-train", _files("train.csv", "other_labels.csv"), [], "data.test_path"),
    ("train-single-class", _files("oneclass.csv"), [], "data.train_path"),
    (
        "instruction-file-without-output-column",
        "task: {kind: causal_lm, instruction: true}\n" + _files("instructions.jsonl"),
        [],
        "task.output_column",
    ),
    (
        "label-words-miss-labels-files",
        "task: {kind: causal_lm, label_words: {pos: good}}\n" + _files("train.csv"),
        [],
        "task.label_words",
    ),
    (
        "label-words-miss-labels-shipped-source",
        "task: {kind: causal_lm, label_words: {positive: good, negative: bad}}",
        [],
        "task.label_words",
    ),
    # a corrupt checkpoint given to --resume: found without torch
    ("resume-checkpoint-truncated", None, ["--resume", "{tmp}/truncated_run"], "--resume"),
    ("resume-checkpoint-not-an-archive", None, ["--resume", "{tmp}/garbage_run"], "--resume"),
    ("resume-checkpoint-info-missing", None, ["--resume", "{tmp}/no_info_run"], "--resume"),
    # where results go
    ("name-escapes-runs-folder", "name: ../../x", [], "name"),
    ("name-absolute", "name: /tmp/x", [], "name"),
    ("second-run-into-a-finished-run", None, ["--output-dir", "{tmp}/finished_run"], "output_dir"),
]


#: Data files of the ``workdir`` fixture: name -> content.
DATA_FILES = {
    "train.csv": "text,label\ngood,pos\nbad,neg\n",
    "nolabel.csv": "text,sentiment\ngood,pos\nbad,neg\n",
    "notext.csv": "body,label\ngood,pos\nbad,neg\n",
    "empty.csv": "",
    "header.csv": "text,label\n",
    "blanklabels.csv": "text,label\ngood,\nbad,\n",
    "oneclass.csv": "text,label\ngood,pos\nfine,pos\ngreat,pos\n",
    "other_labels.csv": "text,label\nmeh,neutral\nbad,neg\n",
    "truncated.jsonl": '{"text": "good", "label": "pos"}\n{"text": "bad", "lab',
    "fake.parquet": "text,label\ngood,pos\n",
    "instructions.jsonl": '{"instruction": "Say hi", "response": "hi"}\n',
}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name, content in DATA_FILES.items():
        (tmp_path / name).write_text(content)
    (tmp_path / "notes.txt").write_text("not a table\n")
    (tmp_path / "model").mkdir()
    _run_dir(tmp_path / "truncated_run", _checkpoint_archive()[:-40], recorded=None)
    _run_dir(tmp_path / "garbage_run", b"not a zip archive at all" * 10, recorded=240)
    _run_dir(tmp_path / "no_info_run", _checkpoint_archive(), recorded=None, info=False)
    finished = tmp_path / "finished_run"
    finished.mkdir()
    (finished / "rounds.parquet").write_bytes(b"PAR1")  # any results file: the directory is taken
    return tmp_path


def _checkpoint_archive() -> bytes:
    """A zip laid out like ``torch.save``'s (what a checkpoint.pt is), built without torch."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("data.pkl", "version", "data/0"):
            archive.writestr(f"archive/{name}", b"x" * 64)
    return buffer.getvalue()


def _run_dir(path: Path, checkpoint: bytes, recorded: int | None, info: bool = True) -> None:
    """A run directory with config.yaml and a checkpoint whose checkpoint.json records ``recorded`` bytes (the
    size of an intact archive when None: the file was truncated or replaced after it was written)."""
    import json

    path.mkdir()
    (path / "config.yaml").write_text("name: resumable\n")
    (path / "checkpoint.pt").write_bytes(checkpoint)
    if info:
        size = len(_checkpoint_archive()) if recorded is None else recorded
        (path / "checkpoint.json").write_text(json.dumps({"round": 1, "bytes": size}))


def _argv(workdir: Path, yaml_text: str | None, extra: list[str]) -> list[str]:
    argv = ["run"]
    if yaml_text is not None:
        config = workdir / "config.yaml"
        config.write_text(yaml_text.replace("{tmp}", str(workdir)))
        argv.append(str(config))
    return argv + [arg.replace("{tmp}", str(workdir)) for arg in extra]


@pytest.mark.parametrize(
    ("yaml_text", "extra", "field_name"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_broken_config_is_one_line_naming_the_field(
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    yaml_text: str | None,
    extra: list[str],
    field_name: str,
) -> None:
    code = main(_argv(workdir, yaml_text, extra))
    err = capsys.readouterr().err.strip()
    assert code == EXIT_CONFIG_ERROR, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"{PREFIX}{field_name}:"), err
    assert len(err) > len(PREFIX) + len(field_name) + 10, err  # says what is wrong, not just where


#: Runs the real CLI module as ``__main__`` and reports afterwards whether Ray was ever imported.
CLI_PROBE = (
    "import runpy, sys\n"
    "sys.argv = ['fedspine'] + sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_module('fedspine_ray.cli', run_name='__main__')\n"
    "    code = 0\n"
    "except SystemExit as exc:\n"
    "    code = exc.code\n"
    "print('ray imported:', 'ray' in sys.modules)\n"
    "sys.exit(code)\n"
)


@pytest.mark.parametrize(
    ("yaml_text", "extra", "field_name"),
    [
        ("training:\n  rounds: 3\n lr: [\n", [], "config"),
        ("data: {source: files, train_path: /nonexistent/train.csv}", [], "data.train_path"),
        (_files("header.csv"), [], "data.train_path"),
        (_files("train.csv", "other_labels.csv"), [], "data.test_path"),
        (None, ["--resume", "{tmp}/garbage_run"], "--resume"),
    ],
    ids=[
        "yaml-syntax-error",
        "data-train-path-missing",
        "csv-header-only",
        "test-labels-not-in-train",
        "resume-corrupt-checkpoint",
    ],
)
def test_real_cli_exits_2_with_one_line_before_ray(
    workdir: Path, yaml_text: str | None, extra: list[str], field_name: str
) -> None:
    argv = _argv(workdir, yaml_text, extra)
    proc = subprocess.run(
        [sys.executable, "-c", CLI_PROBE, *argv], capture_output=True, text=True, timeout=300, cwd=workdir
    )
    assert proc.returncode == EXIT_CONFIG_ERROR, proc.stderr
    err_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert err_lines == [line for line in err_lines if line.startswith(f"{PREFIX}{field_name}:")], proc.stderr
    assert len(err_lines) == 1, proc.stderr
    assert "ray imported: False" in proc.stdout


def test_overwrite_replaces_an_earlier_runs_results_and_only_them(tmp_path: Path) -> None:
    """``fedspine run --overwrite``: the earlier run's results go (a stale checkpoint a later --resume would
    load included); the user's other files in the directory stay."""
    from fedspine_ray.config import ConfigError
    from fedspine_ray.launch.preflight import check_run_dir

    run = tmp_path / "run"
    run.mkdir()
    check_run_dir(run)  # empty (or missing) directories are fine
    check_run_dir(tmp_path / "missing")
    (run / "notes.md").write_text("mine")
    check_run_dir(run)  # no results in it
    for name in ("rounds.parquet", "clients.parquet", "summary.json", "checkpoint.pt", "checkpoint.json"):
        (run / name).write_text("old")
    with pytest.raises(ConfigError, match=r"^output_dir: .* already holds a run's results"):
        check_run_dir(run)
    check_run_dir(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.md"]
