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

#: (case id, YAML text or None for the shipped default, extra CLI args, the field the error must name).
#: ``{tmp}`` is replaced by a directory holding ``train.csv``, ``notes.txt`` and an empty ``model/``.
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
]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "train.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    (tmp_path / "notes.txt").write_text("not a table\n")
    (tmp_path / "model").mkdir()
    return tmp_path


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
    ("yaml_text", "field_name"),
    [
        ("training:\n  rounds: 3\n lr: [\n", "config"),
        ("data: {source: files, train_path: /nonexistent/train.csv}", "data.train_path"),
    ],
    ids=["yaml-syntax-error", "data-train-path-missing"],
)
def test_real_cli_exits_2_with_one_line_before_ray(workdir: Path, yaml_text: str, field_name: str) -> None:
    argv = _argv(workdir, yaml_text, [])
    proc = subprocess.run(
        [sys.executable, "-c", CLI_PROBE, *argv], capture_output=True, text=True, timeout=300, cwd=workdir
    )
    assert proc.returncode == EXIT_CONFIG_ERROR, proc.stderr
    err_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert err_lines == [line for line in err_lines if line.startswith(f"{PREFIX}{field_name}:")], proc.stderr
    assert len(err_lines) == 1, proc.stderr
    assert "ray imported: False" in proc.stdout
