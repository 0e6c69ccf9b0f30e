"""Ray Tune sweeps: spec validation (no Ray) and a real 2-trial Tune run on the tiny LLaMA."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fedspine_ray.config import ConfigError, load_config
from fedspine_ray.launch.results import ROUNDS_FILE
from fedspine_ray.launch.sweep_spec import TRIAL_FILE, TRIALS_FILE, load_sweep, sweep_from_dict
from fedspine_ray.launch.tune import run_sweep

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


def test_testbed80_comparison_runs_the_shipped_fedspine_on_the_80_jetsons():
    spec = load_sweep(TUNE_CONFIGS / "paper_comparison_testbed80.yaml")
    assert set(spec.variants) == {"fedit", "hetlora", "fedit_pruned", "fedspine", "fedspine_matched"}
    assert len(spec.search_space["seed"].values) >= 3
    configs = {name: spec.trial_config({"variant": name, "seed": 0}) for name in spec.variants}
    shipped = load_sweep(TUNE_CONFIGS / "paper_comparison.yaml").trial_config(
        {"variant": "fedspine", "seed": 0}
    )
    for config in configs.values():  # 80 Jetsons: 30 TX2, 40 Xavier NX, 10 AGX Xavier, pooled
        assert config.clients.num_clients == 80 and config.clients.placement == "pooled"
        assert set(config.devices.mix) == {"jetson_tx2", "xavier_nx", "agx_xavier"}
        assert config.bandit.algorithm == shipped.bandit.algorithm  # the same FedSpine as the 16-device sweep
        assert config.pruning == shipped.pruning
    matched = configs.pop("fedspine_matched")  # testbed80.yaml as shipped: FedIT's time for 10 rounds there
    assert matched.training == load_config(REPO / "fedspine_ray/configs/testbed80.yaml").training
    assert matched.rounds.fill and matched.training.sim_time_budget_fedit_rounds == 10
    for config in configs.values():  # baselines and the paper's FedSpine: 10 rounds, no budget, no fill
        assert config.training.rounds == 10 and config.training.sim_time_budget_fedit_rounds is None
        assert not config.rounds.fill
    assert configs["fedit_pruned"].method.prune_global and not configs["fedit"].method.prune_global


def test_variants_are_crossed_with_the_search_space():
    raw = {
        "variants": {
            "dense": {"method.name": "fedit"},
            "pruned": {"method.name": "fedit", "method.prune_global": True, "lora.rank": 2},
        },
        "search_space": {"seed": [0, 1, 2]},
    }
    spec = sweep_from_dict(raw)
    assert spec.param_keys == ("variant", "seed")  # variant is a trials.parquet column
    pruned = spec.trial_config({"variant": "pruned", "seed": 2})
    assert (pruned.method.prune_global, pruned.lora.rank, pruned.seed) == (True, 2, 2)
    assert spec.trial_config({"variant": "dense", "seed": 1}).method.prune_global is None
    assert spec.trial_config({"variant": "pruned", "lora.rank": 4}).lora.rank == 4  # trial params win
    with pytest.raises(ConfigError, match="no variant 'nope'"):
        spec.trial_config({"variant": "nope"})
    only = sweep_from_dict({"variants": raw["variants"]})  # variants alone: one trial each
    assert only.search_space == {} and only.param_keys == ("variant",)
    from fedspine_ray.launch.sweep_spec import select_variants

    assert list(select_variants(spec, ["pruned"]).variants) == ["pruned"]  # fedspine sweep --variants pruned
    with pytest.raises(ConfigError, match="unknown variant 'nope'"):
        select_variants(spec, ["dense", "nope"])


@pytest.mark.parametrize(
    ("variants", "space", "field_name"),
    [
        ({"bad": {"lora.rank": 0}}, {"seed": [0]}, "sweep.variants.bad.lora.rank"),
        ({"bad": {"method.name": "nope"}}, {"seed": [0]}, "sweep.variants.bad.method.name"),
        ({"bad": [1, 2]}, {"seed": [0]}, "sweep.variants.bad"),
        ({}, {"seed": [0]}, "sweep.variants"),
        # fine alone, impossible with the variant's 2 clients
        ({"two": {"clients.num_clients": 2}}, {"clients.clients_per_round": [3]}, "sweep.search_space"),
    ],
)
def test_invalid_variants_name_the_field(variants, space, field_name):
    with pytest.raises(ConfigError) as info:
        sweep_from_dict({"variants": variants, "search_space": space})
    assert str(info.value).startswith(field_name), str(info.value)


def test_paper_comparison_sweep_validates():
    spec = load_sweep(TUNE_CONFIGS / "paper_comparison.yaml")
    unpruned, pruned = {"fedit", "hetlora", "flexlora"}, {"fedit_pruned", "fixed_ratio", "random_arms"}
    ablations = {"fedspine_no_bandit", "fedspine_no_prune", "fedspine_no_rank"}
    # method fedspine with other settings: bandit, or a simulated-time budget instead of 10 rounds
    fedspine_settings = {
        "fedspine_no_time_model",
        "fedspine_grid",
        "fedspine_timed",
        "fedspine_fill",
        "fedspine_matched",
    }
    assert set(spec.variants) == unpruned | pruned | ablations | fedspine_settings | {
        "fedspine",
        "prune_then_tune",
    }
    assert len(spec.search_space["seed"].values) >= 3
    configs = {name: spec.trial_config({"variant": name, "seed": 0}) for name in spec.variants}
    assert {c.method.name for c in configs.values()} == set(spec.variants) - {
        "fedit_pruned"
    } - fedspine_settings
    assert configs["fedit_pruned"].method.prune_global and configs["fedit"].method.prune_global is False
    assert configs["fedspine"].rounds.time_model and not configs["fedspine_no_time_model"].rounds.time_model
    assert (
        configs["fedspine_grid"].bandit.algorithm == "discounted_ucb" != configs["fedspine"].bandit.algorithm
    )
    movies = load_sweep(TUNE_CONFIGS / "paper_comparison_movies.yaml")
    assert set(movies.variants) == set(spec.variants)
    assert movies.trial_config({"variant": "fedspine", "seed": 0}).data.source == "rotten_tomatoes"
    shipped = load_sweep(TUNE_CONFIGS / "fedspine_vs_baselines.yaml").base_config()  # fedspine.yaml
    matched = configs.pop(
        "fedspine_matched"
    )  # the shipped FedSpine: FedIT's time for 10 rounds, with the fill
    assert matched.training == shipped.training and matched.bandit == shipped.bandit
    assert shipped.training.sim_time_budget_fedit_rounds == 10 and shipped.rounds.fill
    timed = configs.pop("fedspine_timed").training
    assert (timed.max_sim_time_s, timed.rounds, timed.sim_time_budget_fedit_rounds) == (120, 40, None)
    fill = configs.pop("fedspine_fill")  # fedspine_timed plus local steps that fill the round
    assert fill.training == timed and fill.rounds.fill
    assert not configs["fedspine"].rounds.fill
    # everyone else as the comparison was measured: 10 rounds, no time budget, no fill
    measured = dataclasses.replace(shipped.training, rounds=10, sim_time_budget_fedit_rounds=None)
    assert dataclasses.replace(timed, max_sim_time_s=None, rounds=10) == measured
    for config in configs.values():  # the same population, data, rounds and sparsity target for everyone
        assert config.devices.mix == shipped.devices.mix and config.clients == shipped.clients
        assert config.training == measured and config.pruning == shipped.pruning
        assert not config.rounds.fill


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
            # simulated devices, so the clients' time breakdown columns are real simulated values
            "devices.mix": {"jetson_nano": 1.0, "agx_orin": 1.0},
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
        trial = json.loads((Path(output_dir) / TRIAL_FILE).read_text())
        assert trial["trial_id"] == Path(output_dir).name and trial["params"] == {"lora.rank": rank}
        assert_time_breakdown(Path(output_dir), rounds)
    assert not [p for p in spec.sweep_dir.iterdir() if p.name.startswith(f".{TRIALS_FILE}")]

    from analysis import report

    out = tmp_path / "report"
    assert report.main([str(spec.sweep_dir / "runs" / "*"), "--out", str(out)]) == 0
    payload = json.loads((out / "summary.json").read_text())
    assert len(payload["rows"]) == 2 and payload["targets"]
    assert {"time_breakdown.png", "accuracy_by_variant.png"} <= {p.name for p in out.glob("*.png")}


def assert_time_breakdown(output_dir: Path, rounds: pd.DataFrame) -> None:
    """clients.parquet splits each trained client's simulated time into download + compute + upload, and
    the wait for the slowest device brings every client to the round's duration (wait_all)."""
    clients = pd.read_parquet(output_dir / "clients.parquet")
    done = clients[clients["status"] == "ok"]
    assert len(done) >= 1
    terms = done["sim_download_s"] + done["sim_compute_s"] + done["sim_upload_s"]
    assert (done["sim_download_s"] > 0).all() and (done["sim_compute_s"] > 0).all()
    assert (done["sim_upload_s"] > 0).all() and (done["sim_idle_s"] >= 0).all()
    assert terms.tolist() == pytest.approx(done["sim_time_s"].tolist())
    round_time = rounds.set_index("round").loc[done["round"], "round_sim_time_s"].to_numpy()
    assert (done["sim_time_s"] + done["sim_idle_s"]).tolist() == pytest.approx(round_time.tolist())
    assert done["sim_idle_s"].min() == pytest.approx(0.0)  # the slowest device waits for nobody


def test_trial_placement_group_holds_every_client_actor(tmp_path):
    from fedspine_ray.launch.tune import trial_bundles

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
    from fedspine_ray.cli import main

    assert main(["sweep", str(write_sweep(tmp_path, mode="maximize")), "--set", "lora.rank=2"]) == 2
    assert "sweep.mode" in capsys.readouterr().err


def test_failed_trial_is_a_row_with_its_error(ray_session, tiny_llama_dir, tiny_text_csv, tmp_path):
    data = tmp_path / "missing.csv"
    data.write_text(tiny_text_csv.read_text())
    raw = {
        "name": "broken",
        "base": {
            "model": {"path": str(tiny_llama_dir)},
            "data": {"source": "files", "train_path": str(data)},
        },
        "search_space": {"seed": [0]},
        "storage_path": str(tmp_path / "sweeps"),
    }
    spec = sweep_from_dict(raw)  # the file is there when the sweep is validated ...
    data.unlink()  # ... and gone when its trial runs
    table = run_sweep(spec, quiet=True)
    assert len(table) == 1 and table.loc[0, "status"] == "error"
    error = table.loc[0, "error"]
    assert "ConfigError" in error and "missing.csv' not found" in error, error
    assert math.isnan(table.loc[0, "test_accuracy"])
    assert (tmp_path / "sweeps" / "broken" / TRIALS_FILE).is_file()


def test_trials_table_takes_parameters_from_the_run_directory_when_tune_lost_the_config(tmp_path):
    """A restored trial's Result can come back without ``config`` (the resume flake under load): its row
    still names its parameters, read from the ``trial.json`` the trial wrote into its run directory."""
    from ray.tune import Result

    from fedspine_ray.launch.sweep_spec import RUNS_SUBDIR
    from fedspine_ray.launch.tune import trials_table

    spec = sweep_from_dict({"name": "lost", "search_space": {"seed": [0, 1]}, "storage_path": str(tmp_path)})
    results = []
    for index, seed in enumerate((0, 1)):
        trial_id = f"abcde_{index:05d}"
        run_dir = spec.sweep_dir / RUNS_SUBDIR / trial_id
        run_dir.mkdir(parents=True)
        (run_dir / TRIAL_FILE).write_text(json.dumps({"trial_id": trial_id, "params": {"seed": seed}}))
        metrics = {"trial_id": trial_id, "round": 3, "test_accuracy": 0.5 + seed / 10}
        if seed == 0:
            metrics["config"] = {"seed": 0}  # the normal case: Tune kept the config
        history = pd.DataFrame({"test_accuracy": [0.4, metrics["test_accuracy"]]})
        results.append(Result(metrics, None, None, str(run_dir), metrics_dataframe=history))
    table = trials_table(results, spec)
    assert table["seed"].tolist() == [0, 1]
    assert table["test_accuracy"].tolist() == [0.5, 0.6] and (table["status"] == "ok").all()
    assert table["output_dir"].tolist() == [
        str(spec.sweep_dir / RUNS_SUBDIR / f"abcde_{i:05d}") for i in (0, 1)
    ]
