"""Ray Tune sweeps: spec validation (no Ray) and a real 2-trial Tune run on the tiny LLaMA."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fedspine_ray.config import ConfigError
from fedspine_ray.results import ROUNDS_FILE
from fedspine_ray.sweep import TRIALS_FILE, load_sweep, run_sweep, sweep_from_dict

REPO = Path(__file__).resolve().parents[1]
TUNE_CONFIGS = REPO / "tune_configs"


def write_sweep(tmp_path: Path, **fields) -> Path:
    raw = {"search_space": {"lora.rank": [2, 4]}, **fields}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_minimal_sweep_defaults(tmp_path):
    spec = load_sweep(write_sweep(tmp_path))
    assert spec.name == "sweep"  # the file stem
    assert spec.metric == "test_accuracy" and spec.mode == "max"
    assert spec.max_concurrent_trials == 1 and spec.num_samples == 1
    assert 0 < spec.trial_cpus < 0.1
    assert spec.search_space["lora.rank"].kind == "grid"
    assert spec.trial_config({"lora.rank": 4}).lora.rank == 4
    assert spec.sweep_dir.is_absolute()


def test_domain_forms(tmp_path):
    spec = load_sweep(
        write_sweep(
            tmp_path,
            search_space={
                "lora.rank": {"grid": [2, 8]},
                "seed": {"choice": [0, 1, 2]},
                "training.lr": {"loguniform": [1e-4, 1e-2]},
            },
            num_samples=3,
        )
    )
    kinds = {key: domain.kind for key, domain in spec.search_space.items()}
    assert kinds == {"lora.rank": "grid", "seed": "choice", "training.lr": "loguniform"}
    assert spec.num_samples == 3


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"search_space": {}}, "sweep.search_space"),
        ({"search_space": {"lora.rnak": [2]}}, "sweep.search_space.lora.rnak"),
        ({"search_space": {"lora.rank": [2, 0]}}, "sweep.search_space.lora.rank"),
        ({"search_space": {"lora.rank": 4}}, "sweep.search_space.lora.rank"),
        ({"search_space": {"lora.rank": {"bayes": [1, 2]}}}, "sweep.search_space.lora.rank"),
        ({"search_space": {"training.lr": {"uniform": [0.1, 0.01]}}}, "sweep.search_space.training.lr"),
        ({"search_space": {"method.name": ["fedit", "nope"]}}, "sweep.search_space.method.name"),
        ({"metric": "accuracy"}, "sweep.metric"),
        ({"mode": "maximize"}, "sweep.mode"),
        ({"num_samples": 0}, "sweep.num_samples"),
        ({"max_concurrent_trials": "2"}, "sweep.max_concurrent_trials"),
        ({"trial_cpus": 0}, "sweep.trial_cpus"),
        ({"name": "a/b"}, "sweep.name"),
        ({"serach_space": {}}, "sweep.serach_space"),
        ({"base_config": "no/such/file.yaml"}, "sweep.base_config"),
        ({"base_config": "package:nope.yaml"}, "sweep.base_config"),
        ({"base": {"training": {"rounds": 0}}}, "sweep.base.training.rounds"),
        ({"base": {}, "base_config": "package:default.yaml"}, "sweep.base"),
        ({"overrides": {"training.rounds": -1}}, "sweep.overrides.training.rounds"),
    ],
)
def test_invalid_sweeps_name_the_field(tmp_path, fields, field_name):
    with pytest.raises(ConfigError) as info:
        load_sweep(write_sweep(tmp_path, **fields))
    assert str(info.value).startswith(field_name), str(info.value)


def test_grid_combinations_are_validated_together():
    # each value is fine alone, but 3 clients per round is impossible with 2 clients
    raw = {
        "search_space": {"clients.num_clients": [2, 4], "clients.clients_per_round": [1, 3]},
    }
    with pytest.raises(ConfigError, match="clients.clients_per_round"):
        sweep_from_dict(raw)


def test_missing_sweep_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="^sweep: file"):
        load_sweep(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("search_space: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_sweep(bad)


def test_relative_base_config_resolves_from_the_sweep_file(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"name": "from-file", "lora": {"rank": 2}}))
    spec = load_sweep(write_sweep(tmp_path, base_config="base.yaml"))
    assert spec.base_config().name == "from-file"


def test_shipped_sweeps_load():
    for name in ("smoke.yaml", "lora_rank_sweep.yaml"):
        spec = load_sweep(TUNE_CONFIGS / name)
        assert spec.search_space and spec.max_concurrent_trials == 1
    from fedspine_ray.strategies import STRATEGIES

    wanted = {"fedit", "hetlora", "flexlora", "fedspine"}
    if not wanted <= set(STRATEGIES) or not (REPO / "fedspine_ray/configs/fedspine.yaml").is_file():
        pytest.skip("fedspine_vs_baselines.yaml needs all four methods and the shipped fedspine.yaml")
    spec = load_sweep(TUNE_CONFIGS / "fedspine_vs_baselines.yaml")
    assert set(spec.search_space["method.name"].values) == wanted


def test_smoke_sweep_runs_two_real_tune_trials(ray_session, tiny_llama_dir, tiny_text_csv, tmp_path):
    spec = load_sweep(
        TUNE_CONFIGS / "smoke.yaml",
        overrides={
            "model.path": str(tiny_llama_dir),
            "model.max_seq_len": 32,
            "data.source": "files",
            "data.train_path": str(tiny_text_csv),
            "data.max_train_samples": 120,
            "data.max_test_samples": 48,
        },
    )
    spec = type(spec)(**{**spec.__dict__, "storage_path": str(tmp_path / "sweeps")})
    table = run_sweep(spec, quiet=True)

    assert len(table) == 2
    assert (table["status"] == "ok").all(), table["error"].tolist()
    assert sorted(table["lora.rank"]) == [2, 4]
    assert table["trial_id"].is_unique
    assert all(math.isfinite(a) and 0 <= a <= 1 for a in table["test_accuracy"])
    assert (table["round"] == 1).all()
    saved = pd.read_parquet(spec.sweep_dir / TRIALS_FILE)
    pd.testing.assert_frame_equal(saved, table, check_dtype=False)
    for output_dir, rank in zip(table["output_dir"], table["lora.rank"], strict=True):
        rounds = pd.read_parquet(Path(output_dir) / ROUNDS_FILE)
        assert rounds["round"].tolist() == [0, 1]  # round 0 = evaluation before training
        assert Path(output_dir).parent.parent == spec.sweep_dir
        assert yaml.safe_load((Path(output_dir) / "config.yaml").read_text())["lora"]["rank"] == rank
    assert not [p for p in spec.sweep_dir.iterdir() if p.name.startswith(f".{TRIALS_FILE}")]


def test_trial_placement_group_holds_every_client_actor(tmp_path):
    from fedspine_ray.sweep import trial_bundles

    spec = load_sweep(
        write_sweep(
            tmp_path,
            overrides={"clients.num_clients": 3, "devices.mix": {"jetson_nano": 1.0, "agx_orin": 2.0}},
        )
    )
    bundles = trial_bundles(spec, {"lora.rank": 2})
    assert bundles[0] == {"CPU": spec.trial_cpus}  # the trial itself: next to nothing
    assert len(bundles) == 1 + 3
    custom = [k for b in bundles[1:] for k in b if k.startswith("fedspine_")]
    assert sorted(custom) == ["fedspine_agx_orin", "fedspine_agx_orin", "fedspine_jetson_nano"]
    assert all(b["CPU"] > 0 and b["memory"] > 0 for b in bundles[1:])


def test_sweep_command_exits_2_on_config_error(tmp_path, capsys):
    import argparse

    from fedspine_ray.sweep import add_sweep_command, run_sweep_command

    parser = argparse.ArgumentParser(prog="fedspine")
    add_sweep_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sweep", str(write_sweep(tmp_path, mode="maximize")), "--set", "lora.rank=2"])
    assert run_sweep_command(args) == 2
    assert "sweep.mode" in capsys.readouterr().err


def test_failed_trial_is_a_row_with_its_error(ray_session, tiny_llama_dir, tmp_path):
    raw = {
        "name": "broken",
        "base": {"model": {"path": str(tiny_llama_dir)}, "data": {"source": "files", "train_path": "x.csv"}},
        "search_space": {"data.train_path": [str(tmp_path / "missing.csv")]},
        "storage_path": str(tmp_path / "sweeps"),
    }
    table = run_sweep(sweep_from_dict(raw), quiet=True)
    assert len(table) == 1 and table.loc[0, "status"] == "error"
    error = table.loc[0, "error"]
    assert error.startswith("fedspine_ray.config.ConfigError") and "missing.csv' not found" in error, error
    assert math.isnan(table.loc[0, "test_accuracy"])
    assert (tmp_path / "sweeps" / "broken" / TRIALS_FILE).is_file()
