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
        # schedulers, search algorithms, stopping, retries (issue 25)
        ({"scheduler": "fifo"}, "sweep.scheduler.type"),
        ({"scheduler": {"grace_period": 2}}, "sweep.scheduler.type"),
        (
            {"scheduler": {"type": "asha", "perturbation_interval": 2}},
            "sweep.scheduler.perturbation_interval",
        ),
        ({"scheduler": {"type": "asha", "grace_period": 0}}, "sweep.scheduler.grace_period"),
        ({"scheduler": {"type": "asha", "max_t": 2, "grace_period": 3}}, "sweep.scheduler.grace_period"),
        ({"scheduler": {"type": "asha", "reduction_factor": 1}}, "sweep.scheduler.reduction_factor"),
        ({"scheduler": {"type": "asha", "time_attr": "wall_time_s"}}, "sweep.scheduler.time_attr"),
        ({"scheduler": {"type": "asha", "time_attr": "sim_time_s"}}, "sweep.scheduler.max_t"),
        ({"scheduler": {"type": "hyperband"}}, "sweep.overrides"),  # needs runtime.checkpoint_every: 1
        # a scheduler compares every round's metric; training.eval_every > 1 leaves rounds without one
        ({"overrides": {"training.eval_every": 2}, "scheduler": "asha"}, "sweep.overrides"),
        (
            {"scheduler": "asha", "search_space": {"training.eval_every": [1, 3]}},
            "sweep.search_space.training.eval_every",
        ),
        (
            {"scheduler": "asha", "search_space": None, "variants": {"a": {"training.eval_every": 4}}},
            "sweep.variants.a",
        ),
        ({"scheduler": {"type": "pbt"}}, "sweep.scheduler.hyperparam_mutations"),
        (
            {"scheduler": {"type": "pbt", "hyperparam_mutations": {"lora.rank": [2, 4]}}},
            "sweep.scheduler.hyperparam_mutations.lora.rank",
        ),
        (
            {"scheduler": {"type": "pbt", "hyperparam_mutations": {"training.lr": [0.001, 2.0]}}},
            "sweep.scheduler.hyperparam_mutations.training.lr",
        ),
        (  # PBT clones from checkpoints: the runs must write them
            {"scheduler": {"type": "pbt", "hyperparam_mutations": {"training.lr": [0.001, 0.01]}}},
            "sweep.overrides",
        ),
        (
            {
                "overrides": {"runtime.checkpoint_every": 2},
                "scheduler": {
                    "type": "pbt",
                    "perturbation_interval": 3,
                    "hyperparam_mutations": {"training.lr": [0.001, 0.01]},
                },
            },
            "sweep.overrides",
        ),
        ({"search_alg": "skopt"}, "sweep.search_alg.type"),
        ({"search_alg": "optuna"}, "sweep.search_space.lora.rank"),  # a grid cannot be searched
        (
            {"search_alg": {"type": "optuna", "sed": 1}, "search_space": {"lora.rank": {"choice": [2, 4]}}},
            "sweep.search_alg.sed",
        ),
        (
            {"search_alg": "optuna", "search_space": None, "variants": {"a": {"lora.rank": 2}}},
            "sweep.variants",
        ),
        ({"stop": {"accuracy": 0.9}}, "sweep.stop.accuracy"),
        ({"stop": {"round": "two"}}, "sweep.stop.round"),
        ({"stop": []}, "sweep.stop"),
        ({"time_budget_s": 0}, "sweep.time_budget_s"),
        ({"max_failures": -1}, "sweep.max_failures"),
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


def test_trial_placement_group_holds_every_client_actor_when_dedicated(tmp_path):
    from fedspine_ray.launch.tune import trial_bundles

    spec = load_sweep(
        write_sweep(
            tmp_path,
            overrides={
                "clients.num_clients": 3,
                "clients.placement": "dedicated",
                "devices.mix": {"jetson_nano": 1.0, "agx_orin": 2.0},
            },
        )
    )
    bundles = trial_bundles(spec, {"lora.rank": 2}, {"CPU": 2.0})
    assert bundles[0] == {"CPU": spec.trial_cpus}  # the trial itself: next to nothing
    assert len(bundles) == 1 + 3  # one per client actor; the server (no GPU) asks for nothing
    custom = [k for b in bundles[1:] for k in b if k.startswith("fedspine_")]
    assert sorted(custom) == ["fedspine_agx_orin", "fedspine_agx_orin", "fedspine_jetson_nano"]
    assert all(b["CPU"] > 0 and b["memory"] > 0 for b in bundles[1:])


def test_trial_placement_group_holds_the_pool_workers_when_pooled(tmp_path):
    """``clients.placement: pooled`` (or ``auto`` on a small cluster): one bundle per pool worker, sized by the
    rules the server applies (devices/placement.py), not one per virtual client."""
    from fedspine_ray.devices.placement import client_processes
    from fedspine_ray.devices.population import build_client_devices
    from fedspine_ray.launch.tune import trial_bundles

    mix = {"jetson_nano": 1.0, "agx_orin": 1.0}
    spec = load_sweep(write_sweep(tmp_path, overrides={"clients.num_clients": 12, "devices.mix": mix}))
    small = trial_bundles(spec, {"lora.rank": 2}, {"CPU": 2.0})  # auto on 2 cores: pooled, a worker per class
    assert len(small) == 1 + 2
    assert sorted(k for b in small[1:] for k in b if k.startswith("fedspine_")) == [
        "fedspine_agx_orin",
        "fedspine_jetson_nano",
    ]
    config = spec.trial_config({"lora.rank": 2})
    mode, processes = client_processes(build_client_devices(config), "auto", None, {"CPU": 2.0})
    assert mode == "pooled" and len(processes) == len(small) - 1
    big = trial_bundles(spec, {"lora.rank": 2}, {"CPU": 64.0, "memory": 1e12})  # a node per client: dedicated
    assert len(big) == 1 + 12
    sized = load_sweep(
        write_sweep(
            tmp_path,
            overrides={
                "clients.num_clients": 12,
                "devices.mix": mix,
                "clients.placement": "pooled",
                "clients.pool_size": 3,
            },
        )
    )
    assert len(trial_bundles(sized, {"lora.rank": 2}, {"CPU": 64.0})) == 1 + 2 * 3


def test_trial_placement_group_has_a_bundle_for_the_server_gpus(tmp_path):
    from fedspine_ray.launch.tune import trial_bundles

    spec = load_sweep(write_sweep(tmp_path, overrides={"server.num_gpus": 1, "clients.num_clients": 2}))
    bundles = trial_bundles(spec, {"lora.rank": 2}, {"CPU": 2.0})
    assert bundles[:2] == [{"CPU": spec.trial_cpus}, {"GPU": 1.0}]  # the server actor: num_cpus=0 + its GPU
    assert not any("GPU" in b for b in bundles[2:])  # these clients ask for no GPU
    ranks = {"server.backend": "deepspeed", "server.num_ranks": 2, "server.num_gpus": 0.5}
    zero = load_sweep(write_sweep(tmp_path, overrides={**ranks, "clients.num_clients": 2}))
    bundles = trial_bundles(zero, {"lora.rank": 2}, {"CPU": 2.0})
    assert bundles[1:3] == [{"GPU": 0.5}, {"GPU": 0.5}]  # one per ZeRO rank actor; the server asks for none
    assert not any("GPU" in b for b in bundles[3:])


def test_testbed80_trial_is_schedulable_on_two_cores():
    """80 pooled Jetsons: the trial reserves its 3 pool workers (one per class on 2 CPUs), not 80 clients."""
    from fedspine_ray.launch.tune import trial_bundles

    spec = load_sweep(TUNE_CONFIGS / "paper_comparison_testbed80.yaml")
    for variant in spec.variants:
        bundles = trial_bundles(spec, {"variant": variant, "seed": 0}, {"CPU": 2.0})
        assert len(bundles) == 1 + 3
        assert sum(b.get("CPU", 0) for b in bundles) <= 2.0
        assert sum(b.get("memory", 0) for b in bundles) < 8 * 2**30


def test_every_shipped_sweep_trial_fits_a_two_core_box():
    """Every shipped sweep's trials are schedulable here (one trial's placement group within 2 CPUs and the
    memory a local Ray offers), unless its header says what it needs instead (a ``# Needs:`` line)."""
    from fedspine_ray.launch.tune import trial_bundles

    for path in sorted(TUNE_CONFIGS.glob("*.yaml")):
        header = [line for line in path.read_text().splitlines() if line.startswith("#")]
        if any(line.startswith("# Needs:") for line in header):
            continue
        spec = load_sweep(path)
        variants = list(spec.variants) or [None]
        first = {key: domain.values[0] for key, domain in spec.search_space.items()}
        for variant in variants:
            params = {**first, **({"variant": variant} if variant else {})}
            bundles = trial_bundles(spec, params, {"CPU": 2.0})
            assert sum(b.get("CPU", 0) for b in bundles) <= 2.0, (path.name, variant)
            # a local Ray on a 24 GiB box offers about 16 GiB of `memory` to actors
            assert sum(b.get("memory", 0) for b in bundles) <= 12 * 2**30, (path.name, variant)


def test_scheduler_search_alg_and_stop_reach_tune(tmp_path):
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator

    from fedspine_ray.launch.tune import run_config, tune_config

    spec = load_sweep(
        write_sweep(
            tmp_path,
            search_space={"training.lr": {"loguniform": [1e-4, 1e-2]}},
            scheduler="asha",
            search_alg={"type": "optuna", "seed": 3},
            num_samples=6,
            metric="test_loss",
            mode="min",
            stop={"round": 4},
            time_budget_s=600,
            max_failures=2,
            overrides={"training.rounds": 5},
        )
    )
    assert spec.scheduler.kind == "asha" and spec.scheduler.max_t == 5  # default: the base's rounds
    assert spec.scheduler.grace_period == 1 and spec.scheduler.reduction_factor == 4  # Tune's defaults
    tc = tune_config(spec)
    assert (tc.metric, tc.mode, tc.num_samples, tc.time_budget_s) == ("test_loss", "min", 6, 600)
    assert isinstance(tc.scheduler, ASHAScheduler) and tc.scheduler._time_attr == "round"
    assert tc.scheduler._max_t == 5
    searcher = tc.search_alg.searcher if isinstance(tc.search_alg, SearchGenerator) else tc.search_alg
    searcher = searcher.searcher if isinstance(searcher, ConcurrencyLimiter) else searcher
    assert type(searcher).__name__ == "OptunaSearch"
    rc = run_config(spec)
    assert rc.stop == {"round": 4.0} and rc.failure_config.max_failures == 2
    pbt = load_sweep(
        write_sweep(
            tmp_path,
            overrides={"runtime.checkpoint_every": 1},
            scheduler={
                "type": "pbt",
                "perturbation_interval": 2,
                "hyperparam_mutations": {
                    "training.lr": {"loguniform": [1e-4, 1e-2]},
                    "training.local_steps": [2, 4],
                },
            },
        )
    )
    assert pbt.param_keys[0] == "lora.rank"  # trials.parquet columns: searched, then mutated keys
    assert set(pbt.param_keys[1:]) == {"training.lr", "training.local_steps"}
    scheduler = tune_config(pbt).scheduler
    assert isinstance(scheduler, PopulationBasedTraining) and scheduler._perturbation_interval == 2
    assert scheduler._hyperparam_mutations["training.local_steps"] == [2, 4]
    assert run_config(pbt).checkpoint_config.num_to_keep >= 3  # PBT clones older checkpoints of others


def test_search_alg_without_its_package_names_the_extra(tmp_path, monkeypatch, capsys):
    import importlib.util

    from fedspine_ray.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a)
    )
    sweep = write_sweep(tmp_path, search_alg="optuna", search_space={"lora.rank": {"choice": [2, 4]}})
    assert main(["sweep", str(sweep)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "fedspine-ray[hpo]"' in err, err
    assert err.startswith("fedspine: config error: sweep.search_alg:"), err


@pytest.mark.parametrize(
    ("storage", "remote"),
    [("s3://bucket/sweeps", True), ("gs://bucket/a/b", True), ("file:///tmp/fedspine-sweeps", False)],
)
def test_storage_uris_reach_tune_unresolved(tmp_path, storage, remote):
    from fedspine_ray.launch.sweep_spec import with_storage
    from fedspine_ray.launch.tune import run_config, trials_location

    spec = load_sweep(write_sweep(tmp_path, name="uri", storage_path=storage))
    assert spec.storage == storage and spec.location == f"{storage}/uri"
    config = run_config(spec)
    assert config.storage_path == storage  # not Path.resolve()d into <cwd>/s3:/bucket/...
    assert spec.remote_storage is remote and config.sync_config.sync_artifacts is remote
    assert (
        trials_location(spec) == f"{storage}/uri/{TRIALS_FILE}"
        if remote
        else str(spec.sweep_dir / TRIALS_FILE)
    )
    if not remote:
        assert spec.sweep_dir == Path("/tmp/fedspine-sweeps/uri")
    local = with_storage(spec, "relative/sweeps")  # --storage-path: a local path is made absolute
    assert Path(local.storage).is_absolute() and local.storage.endswith("relative/sweeps")


def test_knobs_sweep_tunes_fedspines_own_knobs_with_asha():
    spec = load_sweep(TUNE_CONFIGS / "fedspine_knobs_asha.yaml")
    assert spec.scheduler.kind == "asha" and spec.scheduler.time_attr == "sim_time_s"
    assert {"bandit.exploration", "rounds.time_slack", "rounds.fill_max_factor"} <= set(spec.search_space)
    assert {"pruning.schedule", "pruning.end_fraction"} <= set(spec.search_space)
    assert spec.num_samples > 1 and spec.base_config().method.name == "fedspine"


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
