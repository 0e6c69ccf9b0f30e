"""analysis/: tables and plots over real Parquet run directories with the runtime's schema."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis import comparison, plots, report, stats, tables
from fedspine_ray.launch.results import CLIENTS_FILE, ROUNDS_FILE


def round_rows(method: str, accuracies: list[float], sim_times: list[float]) -> pd.DataFrame:
    """Rows with every column of FederatedServer.run_round's round_row (round 0 = before training)."""
    n = len(accuracies)
    return pd.DataFrame(
        {
            "round": range(n),
            "method": method,
            "sim_time_s": sim_times,
            "round_sim_time_s": [0.0] + [b - a for a, b in zip(sim_times, sim_times[1:], strict=False)],
            "wall_time_s": [1.0 + r for r in range(n)],
            "round_wall_time_s": [0.0] + [1.0] * (n - 1),
            "train_loss": [math.nan] + [1.0 / r for r in range(1, n)],
            "test_loss": [1.0 - a for a in accuracies],
            "test_accuracy": accuracies,
            "bytes_down": [0] + [1000] * (n - 1),
            "bytes_up": [0] + [100] * (n - 1),
            "num_selected": [0] + [2] * (n - 1),
            "num_aggregated": [0] + [2] * (n - 1),
            "trainable_params": [0] + [500] * (n - 1),
            "total_params": [10_000] * n,
            "sparsity": [0.0] * n,
        }
    )


def client_row(rnd: int, cid: int, device_class: str, status: str, ratio: float, rank: int) -> dict:
    """One row with every column of FederatedServer._client_row."""
    return {
        "round": rnd,
        "client_id": cid,
        "device_class": device_class,
        "status": status,
        "num_samples": 50,
        "pruning_ratio": ratio,
        "lora_rank": rank,
        "arm": 0,
        "local_steps": 4 + rank,  # any per-client value; arm_usage averages it
        "loss_first": 1.0,
        "loss_last": 0.8,
        "loss_mean": 0.9,
        "sim_time_s": 3.0,
        "wall_time_s": 0.5,
        "bytes_down": 1000,
        "bytes_up": 100,
        "flops_per_token": 1e6,
        "tokens_processed": 640,
        "memory_required_bytes": 10**8,
        "memory_available_bytes": 4 * 10**8,
        "model_params": 10_000,
        "trainable_params": 500,
        "reward": 0.1,
    }


def write_run(directory: Path, rounds: pd.DataFrame, clients: list[dict]) -> Path:
    directory.mkdir(parents=True)
    rounds.to_parquet(directory / ROUNDS_FILE, index=False)
    pd.DataFrame(clients).to_parquet(directory / CLIENTS_FILE, index=False)
    return directory


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    nano_fedit = [client_row(r, 0, "jetson_nano", "ok", 0.0, 8) for r in (1, 2, 3)]
    write_run(tmp_path / "fedit-a", round_rows("fedit", [0.4, 0.5, 0.62, 0.7], [0, 10, 20, 30]), nano_fedit)
    write_run(tmp_path / "fedit-b", round_rows("fedit", [0.4, 0.5, 0.55, 0.6], [0, 10, 20, 30]), nano_fedit)
    spine_clients = [
        client_row(1, 0, "jetson_nano", "oom", 0.25, 4),
        client_row(1, 1, "agx_orin", "ok", 0.0, 8),
        client_row(2, 0, "jetson_nano", "ok", 0.5, 2),
        client_row(2, 1, "agx_orin", "ok", 0.0, 8),
        client_row(3, 0, "jetson_nano", "ok", 0.5, 2),
        client_row(3, 1, "agx_orin", "straggler", 0.25, 4),
    ]
    write_run(
        tmp_path / "fedspine-a", round_rows("fedspine", [0.4, 0.61, 0.65, 0.7], [0, 4, 8, 12]), spine_clients
    )
    write_run(tmp_path / "hetlora-a", round_rows("hetlora", [0.4, 0.45, 0.5, 0.55], [0, 5, 10, 15]), [])
    (tmp_path / "not-a-run").mkdir()
    return tmp_path


def test_load_runs_adds_run_column_and_skips_non_runs(runs):
    rounds, clients = tables.load_runs(runs / "*")
    assert sorted(rounds["run"].unique()) == ["fedit-a", "fedit-b", "fedspine-a", "hetlora-a"]
    assert rounds.columns[0] == "run" and len(rounds) == 4 * 4
    assert len(clients) == 3 + 3 + 6
    only, _ = tables.load_runs([runs / "fedit-a", runs / "fedspine-a"])
    assert set(only["run"]) == {"fedit-a", "fedspine-a"}
    with pytest.raises(FileNotFoundError):
        tables.load_runs(runs / "not-a-run")


def test_time_to_accuracy_hand_computed(runs):
    rounds, _ = tables.load_runs(runs / "*")
    tta = tables.time_to_accuracy(rounds, 0.6).set_index("run")
    assert tta.loc["fedit-a", "sim_time_s"] == 20 and tta.loc["fedit-a", "round"] == 2
    assert tta.loc["fedit-b", "sim_time_s"] == 30  # reaches exactly 0.6: >= counts
    assert tta.loc["fedspine-a", "sim_time_s"] == 4 and tta.loc["fedspine-a", "round"] == 1
    assert math.isnan(tta.loc["hetlora-a", "sim_time_s"]) and math.isnan(tta.loc["hetlora-a", "round"])
    assert (tables.time_to_accuracy(rounds, 0.3)["sim_time_s"] == 0).all()  # round 0 already there


def test_speedup_vs_baseline_hand_computed(runs):
    rounds, _ = tables.load_runs(runs / "*")
    speedup = tables.speedup_vs(rounds, "fedit", 0.6).set_index("run")
    assert speedup.loc["fedspine-a", "baseline_sim_time_s"] == pytest.approx(25.0)  # mean of 20 and 30
    assert speedup.loc["fedspine-a", "speedup"] == pytest.approx(25.0 / 4)
    assert speedup.loc["fedit-a", "speedup"] == pytest.approx(25.0 / 20)
    assert math.isnan(speedup.loc["hetlora-a", "speedup"])
    with pytest.raises(ValueError, match="baseline method 'flexlora'"):
        tables.speedup_vs(rounds, "flexlora", 0.6)


def test_final_metrics(runs):
    rounds, _ = tables.load_runs(runs / "*")
    final = tables.final_metrics(rounds).set_index("run")
    assert final.loc["fedspine-a", "final_accuracy"] == pytest.approx(0.7)
    assert final.loc["fedit-b", "best_accuracy"] == pytest.approx(0.6)
    assert final.loc["fedit-a", "bytes_up"] == 300 and final.loc["fedit-a", "rounds"] == 3
    assert final.loc["hetlora-a", "sim_time_s"] == 15


def test_arm_usage_per_device_class(runs):
    _, clients = tables.load_runs(runs / "fedspine-a")
    usage = tables.arm_usage(clients).set_index("device_class")
    assert usage.loc["jetson_nano", "mean_pruning_ratio"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert usage.loc["jetson_nano", "mean_lora_rank"] == pytest.approx((4 + 2 + 2) / 3)
    assert usage.loc["jetson_nano", "mean_local_steps"] == pytest.approx((8 + 6 + 6) / 3)
    assert usage.loc["jetson_nano", "status_oom"] == 1 and usage.loc["jetson_nano", "status_ok"] == 2
    assert usage.loc["agx_orin", "status_straggler"] == 1 and usage.loc["agx_orin", "assignments"] == 3
    by_run = tables.arm_usage(tables.load_runs(runs / "*")[1], by=("run", "device_class"))
    assert len(by_run) == 4  # fedit-a/nano, fedit-b/nano, fedspine-a/{nano, orin}


def test_plots_write_non_empty_pngs(runs, tmp_path):
    from analysis import plots

    rounds, clients = tables.load_runs(runs / "*")
    acc = plots.plot_accuracy_vs_time(rounds, tmp_path / "out" / "acc.png", target=0.6)
    arms = plots.plot_arm_choice(clients, tmp_path / "out" / "arms.png", run="fedspine-a")
    for path in (acc, arms):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_report_cli_prints_tables_and_writes_report(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert report.main([str(runs / "*"), "--target", "0.6", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Speed-up vs fedit" in printed and "fedspine-a" in printed
    text = (out / "report.md").read_text()
    assert "| run |" in text and "accuracy_vs_sim_time.png" in text and "time_breakdown.png" in text
    # accuracy per variant, time breakdown, per-run accuracy, arms of fedspine (the only variant whose arms vary)
    assert sorted(p.name for p in out.glob("*.png")) == [
        "accuracy_by_variant.png",
        "accuracy_vs_sim_time.png",
        "arms_fedspine.png",
        "time_breakdown.png",
    ]
    assert report.main([str(tmp_path / "nothing-here")]) == 2
    assert report.main([str(runs / "*"), "--baseline", "nope"]) == 2
    assert (
        report.main([str(runs / "*"), "--target", "0.6", "--baseline", "fedit", "--baseline", "hetlora"]) == 0
    )
    printed = capsys.readouterr().out
    assert "Speed-up vs fedit" in printed and "Speed-up vs hetlora" in printed
    assert "fedspine vs hetlora to accuracy 0.6: not measurable" in printed  # hetlora-a never reaches 0.6
    # only the baseline's runs (e.g. a rank sweep of FedIT): no speed-ups to show, still a report
    assert report.main([str(runs / "fedit-*"), "--out", str(tmp_path / "only-fedit")]) == 0
    assert (tmp_path / "only-fedit" / "summary.json").is_file()


def test_a_report_directory_keeps_its_runs_and_can_be_extended(runs, tmp_path, capsys):
    """The report archives the runs' rows: rebuilding from the archive, or from the archive plus new run
    directories, gives the same per-run summary as the original run directories did."""
    full = tmp_path / "full"
    args = ["--target", "0.6", "--horizon", "15"]
    assert report.main([str(runs / "*"), *args, "--out", str(full)]) == 0
    expected = pd.read_parquet(full / "summary.parquet").set_index("run").sort_index()
    partial = tmp_path / "partial"
    assert report.main([str(runs / "fedit-*"), str(runs / "hetlora-a"), *args, "--out", str(partial)]) == 0
    rebuilt = tmp_path / "rebuilt"
    assert report.main([str(partial), str(runs / "fedspine-a"), *args, "--out", str(rebuilt)]) == 0
    got = pd.read_parquet(rebuilt / "summary.parquet").set_index("run").sort_index()
    pd.testing.assert_frame_equal(got[expected.columns], expected)
    with pytest.raises(ValueError, match="both in"):  # a run archived and given again would count twice
        tables.load_runs([partial, runs / "fedit-a"])
    # the command says so in one line and exits 2, writing nothing
    assert report.main([str(partial), str(runs / "fedit-a"), *args, "--out", str(tmp_path / "twice")]) == 2
    assert "name each run once" in capsys.readouterr().err
    assert not (tmp_path / "twice").exists()


def test_prior_summary_rows_count_as_seeds_when_built_at_the_same_targets(runs, tmp_path):
    args = ["--target", "0.6", "--horizon", "15"]
    full, early = tmp_path / "full", tmp_path / "early"
    assert report.main([str(runs / "*"), *args, "--out", str(full)]) == 0
    assert report.main([str(runs / "fedit-b"), str(runs / "hetlora-a"), *args, "--out", str(early)]) == 0
    rounds, clients = tables.load_runs([runs / "fedit-a", runs / "fedspine-a"])
    prior = pd.read_parquet(early / "summary.parquet")
    merged = report.build_report(rounds, clients, [0.6], ["fedit"], horizon_s=15.0, prior_summary=prior)
    expected = pd.read_parquet(full / "summary.parquet").set_index("run").sort_index()
    got = merged.summary.set_index("run").sort_index()
    pd.testing.assert_frame_equal(got[expected.columns], expected, check_dtype=False)
    assert any("earlier report's summary" in note for note in merged.notes)
    with pytest.raises(ValueError, match="--target"):  # built at other targets: not comparable
        report.build_report(rounds, clients, [0.55], ["fedit"], horizon_s=15.0, prior_summary=prior)
    with pytest.raises(ValueError, match="horizon"):
        report.build_report(rounds, clients, [0.6], ["fedit"], horizon_s=20.0, prior_summary=prior)


# ------------------------------------------------------------------ seed-aggregated comparison
def breakdown_client(
    rnd: int, cid: int, status: str, terms: tuple[float, float, float, float] | None
) -> dict:
    """A client row with the simulated time breakdown columns (NaN where the client did not finish)."""
    row = client_row(
        rnd, cid, "jetson_nano" if cid % 2 else "agx_orin", status, 0.3 * (cid % 2), 4 + 4 * (cid % 2)
    )
    down, compute, up, idle = terms if terms is not None else (math.nan,) * 4
    row.update(
        sim_time_s=down + compute + up,
        sim_download_s=down,
        sim_compute_s=compute,
        sim_upload_s=up,
        sim_idle_s=idle,
    )
    return row


#: (variant, seed) -> (accuracies per round, cumulative simulated times); 0.6 reached at the marked time.
CURVES = {
    ("fedit", 0): ([0.4, 0.6, 0.62, 0.65], [0, 20, 40, 60]),  # 0.6 at 20 s
    ("fedit", 1): ([0.4, 0.5, 0.6, 0.64], [0, 15, 30, 45]),  # 30 s
    ("fedit", 2): ([0.4, 0.5, 0.55, 0.6], [0, 10, 20, 40]),  # 40 s
    ("fedspine", 0): ([0.4, 0.6, 0.63, 0.66], [0, 10, 20, 30]),  # 10 s: 2x
    ("fedspine", 1): ([0.4, 0.5, 0.61, 0.63], [0, 6, 12, 18]),  # 12 s: 2.5x
    ("fedspine", 2): ([0.4, 0.45, 0.5, 0.62], [0, 5, 10, 20]),  # 20 s: 2x
}


@pytest.fixture
def seeded_runs(tmp_path: Path) -> Path:
    """Three seeds of fedit and fedspine as a sweep writes them (config.yaml seed, trial.json variant), plus
    one dense and one pruned plain run of hetlora told apart by config.yaml alone."""
    for (variant, seed), (acc, times) in CURVES.items():
        rounds = round_rows(variant, acc, times)
        clients = []
        if variant == "fedspine":
            rounds["sparsity"] = [0.0, 0.1, 0.2, 0.3]
            # round 1: hand-computed breakdown; rounds 2 and 3: every client finishes together
            clients = [
                breakdown_client(1, 0, "ok", (1.0, 4.0, 1.0, 4.0)),
                breakdown_client(1, 1, "ok", (2.0, 7.0, 1.0, 0.0)),
                breakdown_client(1, 2, "oom", None),
                *(breakdown_client(r, c, "ok", (1.0, 2.0, 1.0, 0.0)) for r in (2, 3) for c in (0, 1)),
            ]
        directory = write_run(tmp_path / f"trial-{variant}-{seed}", rounds, clients)
        (directory / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "method": {"name": variant}}))
        (directory / "trial.json").write_text(json.dumps({"trial_id": directory.name, "variant": variant}))
    for name, prune in (("dense", False), ("pruned", True)):
        directory = write_run(
            tmp_path / name, round_rows("hetlora", [0.4, 0.5, 0.6, 0.61], [0, 5, 10, 15]), []
        )
        config = {"seed": 0, "method": {"name": "hetlora", "prune_global": prune}}
        (directory / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_student_t_quantiles_and_intervals_hand_computed():
    # t tables: t_{0.975, df}
    for df, expected in ((1, 12.706205), (2, 4.302653), (4, 2.776445), (30, 2.042272)):
        assert stats.student_t_quantile(0.975, df) == pytest.approx(expected, abs=1e-6)
    assert stats.student_t_quantile(0.025, 2) == pytest.approx(-4.302653, abs=1e-6)
    assert stats.student_t_quantile(0.975, 10**6) == pytest.approx(1.959966, abs=1e-5)  # the normal limit
    ci = stats.mean_interval([20.0, 30.0, 40.0, math.nan])  # NaN = a seed that never reached the target
    half = 4.302653 * 10.0 / math.sqrt(3)
    assert (ci.n, ci.mean, ci.std) == (3, pytest.approx(30.0), pytest.approx(10.0))
    assert (ci.low, ci.high) == (pytest.approx(30 - half, abs=1e-5), pytest.approx(30 + half, abs=1e-5))
    one = stats.mean_interval([5.0])
    assert one.mean == 5.0 and math.isnan(one.low) and one.overlaps(ci)
    ratio = stats.log_ratio_interval([20, 30, 40, 50], [10, 12, 20, math.nan])
    logs = [math.log(2), math.log(2.5), math.log(2)]
    mean = sum(logs) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in logs) / 2)
    assert ratio.n == 3 and ratio.mean == pytest.approx(math.exp(mean))
    assert ratio.low == pytest.approx(math.exp(mean - 4.302653 * std / math.sqrt(3)), rel=1e-6)
    assert ratio.high == pytest.approx(math.exp(mean + 4.302653 * std / math.sqrt(3)), rel=1e-6)


def test_load_runs_labels_variant_and_seed(seeded_runs):
    rounds, clients = tables.load_runs(seeded_runs / "*")
    labels = rounds.groupby("run")[["variant", "seed"]].first()
    assert labels.loc["trial-fedspine-2"].tolist() == ["fedspine", 2]
    assert labels.loc["dense", "variant"] == "hetlora" and labels.loc["pruned", "variant"] == "hetlora_pruned"
    assert set(clients["variant"]) == {"fedspine"}


def test_run_summary_and_default_targets(seeded_runs):
    rounds, clients = tables.load_runs(seeded_runs / "trial-*")
    probe = comparison.run_summary(rounds, clients, [])
    # lowest best accuracy of any run is 0.6 (fedit seed 2): 0.9x, 0.95x and 1x of it
    assert comparison.default_targets(probe) == [0.54, 0.57, 0.6]
    summary = comparison.run_summary(rounds, clients, [0.6]).set_index("run")
    assert summary.loc["trial-fedit-1", "time_to_0.6_s"] == 30
    assert summary.loc["trial-fedspine-1", "time_to_0.6_s"] == 12
    assert summary.loc["trial-fedspine-0", "final_sparsity"] == pytest.approx(0.3)
    assert summary.loc["trial-fedit-2", "bytes_total"] == 3 * 1100
    assert summary.loc["trial-fedspine-0", "mean_round_round_s"] == pytest.approx((10 + 4 + 4) / 3)
    assert math.isnan(summary.loc["trial-fedit-0", "mean_round_round_s"])  # no client rows
    assert comparison.default_targets(probe.assign(initial_accuracy=0.59)) == [0.6]  # lower ones dropped


def test_time_to_target_and_speedup_tables_hand_computed(seeded_runs):
    rounds, clients = tables.load_runs(seeded_runs / "trial-*")
    summary = comparison.run_summary(rounds, clients, [0.6, 0.65])
    tta = comparison.time_to_target_table(summary, [0.6, 0.65]).set_index(["variant", "target"])
    half = 4.302653 * 10.0 / math.sqrt(3)
    row = tta.loc[("fedit", 0.6)]
    assert (row["seeds"], row["reached"], row["time_s_mean"]) == (3, 3, pytest.approx(30.0))
    assert row["time_s_ci_low"] == pytest.approx(30 - half, abs=1e-5)
    assert tta.loc[("fedspine", 0.6), "time_s_mean"] == pytest.approx(14.0)
    assert tta.loc[("fedit", 0.65), "reached"] == 1 and math.isnan(tta.loc[("fedit", 0.65), "time_s_ci_low"])
    speed = comparison.speedup_table(summary, "fedit", [0.6, 0.65]).set_index(["variant", "target"])
    logs = [math.log(2), math.log(2.5), math.log(2)]
    assert speed.loc[("fedspine", 0.6), "speedup"] == pytest.approx(math.exp(sum(logs) / 3))
    assert speed.loc[("fedspine", 0.6), "pairs"] == 3 and speed.loc[("fedspine", 0.6), "verdict"] == "faster"
    assert speed.loc[("fedspine", 0.65), "pairs"] == 1  # fedspine seed 0 vs fedit seed 0: 60 / 30
    assert speed.loc[("fedspine", 0.65), "speedup"] == pytest.approx(2.0)
    assert speed.loc[("fedspine", 0.65), "verdict"] == "not resolved"
    with pytest.raises(ValueError, match="baseline 'hetlora'"):
        comparison.speedup_table(summary, "hetlora", [0.6])


def test_accuracy_and_seed_spread_tables(seeded_runs):
    rounds, clients = tables.load_runs(seeded_runs / "trial-*")
    summary = comparison.run_summary(rounds, clients, [0.6])
    acc = comparison.accuracy_table(summary).set_index("variant")
    std = math.sqrt((0.02**2 + 0.01**2 + 0.03**2) / 2)  # fedit finals 0.65, 0.64, 0.60
    assert acc.loc["fedit", "final_accuracy_mean"] == pytest.approx(0.63)
    assert acc.loc["fedit", "final_accuracy_std"] == pytest.approx(std)
    assert acc.loc["fedit", "final_accuracy_ci_high"] == pytest.approx(0.63 + 4.302653 * std / math.sqrt(3))
    assert acc.loc["fedspine", "final_sparsity_mean"] == pytest.approx(0.3)
    spread = comparison.seed_spread(summary, [0.6]).set_index("variant")
    assert spread.loc["fedit", "seeds"] == "0,1,2"
    assert spread.loc["fedit", "final_accuracy_min"] == pytest.approx(0.6)
    assert spread.loc["fedspine", "time_to_0.6_max_s"] == 20


def test_round_breakdown_means_add_up_to_the_round(seeded_runs):
    rounds, clients = tables.load_runs(seeded_runs / "trial-fedspine-0")
    per_round = comparison.round_breakdown(clients).set_index("round")
    first = per_round.loc[1]
    assert first["clients"] == 2  # the OOM client never finished
    assert (first["sim_download_s"], first["sim_compute_s"]) == (pytest.approx(1.5), pytest.approx(5.5))
    assert (first["sim_upload_s"], first["sim_idle_s"]) == (pytest.approx(1.0), pytest.approx(2.0))
    assert first["round_s"] == pytest.approx(10.0)  # = the slowest client's 2 + 7 + 1
    assert (first["slowest_sim_download_s"], first["slowest_sim_compute_s"]) == (2.0, 7.0)
    summary = comparison.run_summary(rounds, clients, [0.6])
    by_variant = comparison.breakdown_by_variant(clients, summary).set_index("variant")
    assert by_variant.loc["fedspine", "sim_compute_s"] == pytest.approx((5.5 + 2 + 2) / 3)
    assert by_variant.loc["fedspine", "dominant"] == "compute"
    assert comparison.round_breakdown(clients.drop(columns=["sim_idle_s"])).empty  # older runs: no columns


def test_comparison_report_writes_summary_plots_and_findings(seeded_runs, tmp_path):
    out = tmp_path / "paper"
    assert report.main([str(seeded_runs / "trial-*"), "--target", "0.6", "--out", str(out)]) == 0
    payload = json.loads((out / "summary.json").read_text())
    assert payload["targets"] == [0.6] and payload["baselines"] == ["fedit"]
    assert len(payload["rows"]) == 6 and {r["variant"] for r in payload["rows"]} == {"fedit", "fedspine"}
    row = next(r for r in payload["rows"] if r["run"] == "trial-fedspine-2")
    assert row["seed"] == 2 and row["time_to_0.6_s"] == 20 and row["final_sparsity"] == pytest.approx(0.3)
    table = pd.read_parquet(out / "summary.parquet")
    assert len(table) == 6 and {"final_accuracy", "best_accuracy", "sim_time_s", "bytes_total"} <= set(table)
    text = (out / "report.md").read_text()
    assert "fedspine vs fedit to accuracy 0.6: 2.15 [" in text and "faster" in text
    assert "Seeds per variant: 3-3" in text and "dominated by compute" in text
    assert "WARNING" not in text  # the OOM client is a simulated outcome, not a host failure
    assert "vs fedit 0.630 (not equal sparsity: 0.3 vs 0)" in text  # fedit is dense: no equal-sparsity claim
    # a trial that died after round 0 is left out (not a seed with its untrained accuracy)
    write_run(seeded_runs / "trial-died", round_rows("fedit", [0.1], [0.0]), [])
    # a client actor killed by the host: warned about, since its rounds had fewer devices
    clients = pd.read_parquet(seeded_runs / "trial-fedspine-1" / "clients.parquet")
    clients.loc[0, "status"] = "actor_died"
    clients.to_parquet(seeded_runs / "trial-fedspine-1" / "clients.parquet", index=False)
    assert report.main([str(seeded_runs / "trial-*"), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert len(again["rows"]) == 6 and again["targets"] == [0.54, 0.57, 0.6]
    text = (tmp_path / "again" / "report.md").read_text()
    assert "Left out 1 run(s) that stopped before the last round: trial-died" in text
    assert "WARNING fedspine: 1 client-round(s) ended as actor_died in run(s) trial-fedspine-1" in text
    for name in ("accuracy_by_variant.png", "time_breakdown.png", "arms_fedspine.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 5000


def test_time_budget_runs_count_as_finished_and_short_ones_do_not(tmp_path):
    """A run that spent its ``training.max_sim_time_s`` is finished with fewer or more rounds than others;
    one stopped before its planned rounds and budget is left out."""
    specs = {  # name: (rounds run, clock per round, training config)
        "fedit": (3, 10.0, {"rounds": 3}),
        "timed": (6, 4.0, {"rounds": 40, "max_sim_time_s": 24}),
        "timed-died": (2, 4.0, {"rounds": 40, "max_sim_time_s": 24}),
        "fedit-died": (2, 10.0, {"rounds": 3}),
    }
    for name, (n, step, training) in specs.items():
        directory = write_run(
            tmp_path / name,
            round_rows("fedit", [0.4 + 0.05 * r for r in range(n + 1)], [step * r for r in range(n + 1)]),
            [],
        )
        (directory / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "training": training}))
    rounds, clients = tables.load_runs(tmp_path / "*")
    ends = rounds.groupby("run").last()
    assert ends.loc["timed", "sim_time_budget_s"] == 24 and ends.loc["timed", "planned_rounds"] == 40
    assert math.isnan(ends.loc["fedit", "sim_time_budget_s"])
    kept, _, short = report.drop_short_runs(rounds, clients)
    assert short == ["fedit-died", "timed-died"]
    assert set(kept["run"]) == {"fedit", "timed"}
    # without the config columns, the longest run's last round is the yardstick
    _, _, short = report.drop_short_runs(
        rounds.drop(columns=["planned_rounds", "sim_time_budget_s"]), clients
    )
    assert short == ["fedit", "fedit-died", "timed-died"]


def test_targets_skip_the_majority_class_rate_and_the_report_says_so(seeded_runs):
    rounds, clients = tables.load_runs(seeded_runs / "trial-*")
    probe = comparison.run_summary(rounds, clients, [])
    assert probe["majority_accuracy"].isna().all()  # runs written before the column existed
    with_rate = comparison.run_summary(rounds.assign(majority_accuracy=0.56), clients, [])
    assert (with_rate["majority_accuracy"] == 0.56).all()
    # of the 0.54 / 0.57 / 0.6 defaults, 0.54 is what answering one class already scores
    assert comparison.default_targets(with_rate) == [0.57, 0.6]
    built = report.build_report(rounds.assign(majority_accuracy=0.56), clients, targets=[0.55, 0.6])
    assert "Answering the majority class scores 0.56 on the test sets (per seed)." in built.notes
    assert "Target(s) 0.55 are at or below that rate: reaching them measures nothing." in built.notes
    assert "majority_accuracy" in next(iter(built.sections.values()))


def test_accuracy_at_equal_time_default_and_chosen_horizon(seeded_runs):
    rounds, clients = tables.load_runs(seeded_runs / "trial-*")
    # the shortest run is fedspine seed 1 (18 s): every run's accuracy after its last round ending by then
    assert comparison.common_horizon(rounds) == 18
    built = report.build_report(rounds, clients, targets=[0.6])
    summary = built.summary.set_index("run")
    expected = {"fedit-0": 0.4, "fedit-1": 0.5, "fedit-2": 0.5, "fedspine-0": 0.6, "fedspine-1": 0.63}
    for run, accuracy in expected.items():
        assert summary.loc[f"trial-{run}", "accuracy_at_horizon"] == accuracy
    # --horizon 25: fedspine seed 1 (18 s) and seed 2 (20 s) ended before it and count as not there
    chosen = report.build_report(rounds, clients, targets=[0.6], horizon_s=25).summary.set_index("run")
    assert math.isnan(chosen.loc["trial-fedspine-1", "accuracy_at_horizon"])
    assert chosen.loc["trial-fedspine-0", "accuracy_at_horizon"] == 0.63
    acc = comparison.accuracy_table(chosen.reset_index()).set_index("variant")
    assert acc.loc["fedspine", "seeds_at_horizon"] == 1 and acc.loc["fedit", "seeds_at_horizon"] == 3
    title = next(
        t
        for t in report.build_report(rounds, clients, [0.6], horizon_s=25).sections
        if "equal simulated" in t
    )
    assert "25 s, --horizon" in title


def test_several_focus_variants_each_get_their_notes(seeded_runs):
    """``--focus`` repeats: the speed and accuracy notes are stated for every focus variant."""
    rounds, clients = tables.load_runs(seeded_runs / "*")
    one = report.build_report(rounds, clients, [0.6], ["fedit"], focus="fedspine")
    both = report.build_report(rounds, clients, [0.6], ["fedit"], focus=["fedspine", "hetlora_pruned"])
    assert any(n.startswith("fedspine vs fedit") for n in one.notes)
    assert not any("hetlora_pruned vs" in n or "accuracy hetlora_pruned" in n for n in one.notes)
    assert any(n.startswith("hetlora_pruned vs fedit") for n in both.notes)
    assert any("final accuracy hetlora_pruned" in n for n in both.notes)
    assert set(one.notes) < set(both.notes)


def test_student_t_quantiles_come_from_scipy():
    from scipy import stats as scipy_stats

    for p, df in ((0.975, 2), (0.9, 7), (0.025, 30)):
        assert stats.student_t_quantile(p, df) == scipy_stats.t.ppf(p, df)
    with pytest.raises(ValueError, match="0 < p < 1"):
        stats.student_t_quantile(1.0, 3)


def test_paired_test_hand_computed():
    """Per-seed differences 0.05, 0.02, 0.03: mean 1/30, sd 0.015275, t = 3.7796 with 2 degrees of freedom."""
    test = stats.paired_test([0.70, 0.72, 0.69], [0.65, 0.70, 0.66])
    sd = math.sqrt(((0.05 - 1 / 30) ** 2 + (0.02 - 1 / 30) ** 2 + (0.03 - 1 / 30) ** 2) / 2)
    assert test.n == 3 and test.difference.mean == pytest.approx(1 / 30)
    assert test.difference.std == pytest.approx(sd)
    assert test.statistic == pytest.approx((1 / 30) / (sd / math.sqrt(3)))
    assert test.p_value == pytest.approx(0.0634, abs=5e-4)  # t table, df 2
    half = 4.302653 * sd / math.sqrt(3)
    assert (test.difference.low, test.difference.high) == (
        pytest.approx(1 / 30 - half, abs=1e-6),
        pytest.approx(1 / 30 + half, abs=1e-6),
    )
    assert test.verdict == "not resolved"  # p > 0.05: the interval holds 0
    clear = stats.paired_test([0.70, 0.72, 0.69, 0.71], [0.60, 0.63, 0.58, 0.62])
    assert clear.verdict == "higher" and clear.p_value < 0.01
    assert stats.paired_test([0.6, 0.6], [0.7, 0.7]).verdict == "lower"  # no spread, all lower: p = 0
    same = stats.paired_test([0.6, 0.7], [0.6, 0.7])
    assert (same.statistic, same.p_value, same.verdict) == (0.0, 1.0, "not resolved")
    one = stats.paired_test([0.7, math.nan], [0.6, 0.5])  # NaN pairs are dropped: one pair left
    assert one.n == 1 and math.isnan(one.p_value) and one.verdict == "not resolved"


def test_paired_table_compares_each_variant_with_the_baseline_seed_by_seed(seeded_runs):
    from scipy import stats as scipy_stats

    rounds, clients = tables.load_runs(seeded_runs / "trial-*")
    summary = comparison.run_summary(rounds, clients, [0.6], horizon_s=comparison.common_horizon(rounds))
    paired = comparison.paired_table(summary, "fedit").set_index("column")
    final = paired.loc["final_accuracy"]  # fedspine 0.66, 0.63, 0.62 vs fedit 0.65, 0.64, 0.60
    assert (final["variant"], final["pairs"]) == ("fedspine", 3)
    assert final["mean_difference"] == pytest.approx((0.01 - 0.01 + 0.02) / 3)
    expected = scipy_stats.ttest_rel([0.66, 0.63, 0.62], [0.65, 0.64, 0.60])
    assert final["p_value"] == pytest.approx(expected.pvalue) and final["verdict"] == "not resolved"
    at_horizon = paired.loc["accuracy_at_horizon"]  # at 18 s: fedspine 0.6, 0.63, 0.5 vs fedit 0.4, 0.5, 0.5
    assert at_horizon["mean_difference"] == pytest.approx(0.11)
    assert at_horizon["t"] == pytest.approx(
        scipy_stats.ttest_rel([0.6, 0.63, 0.5], [0.4, 0.5, 0.5]).statistic
    )
    with pytest.raises(ValueError, match="baseline 'hetlora'"):
        comparison.paired_table(summary, "hetlora")
    built = report.build_report(rounds, clients, targets=[0.6])
    title = next(t for t in built.sections if t.startswith("Accuracy vs fedit, paired by seed"))
    cell = built.sections[title].set_index("variant").loc["fedspine", "final accuracy"]
    assert cell.startswith("+0.00667 [") and "p=0.53 not resolved (3 pairs)" in cell
    assert any(n.startswith("final accuracy fedspine - fedit paired by seed: +0.00667") for n in built.notes)


def test_unpaired_note_says_one_seed_has_no_interval(seeded_runs):
    """fedspine has 3 seeds, each hetlora variant one: no interval exists there, so none may be called overlapping."""
    rounds, clients = tables.load_runs(seeded_runs / "*")
    built = report.build_report(rounds, clients, targets=[0.6])
    one_seed = [n for n in built.notes if n.startswith("final accuracy fedspine") and " vs hetlora" in n]
    three_seeds = [n for n in built.notes if n.startswith("final accuracy fedspine") and " vs fedit " in n]
    assert one_seed and all(n.endswith("one seed on a side, no interval (not resolved).") for n in one_seed)
    assert three_seeds and all("one seed" not in n for n in three_seeds)


def test_fedspine_report_is_a_subcommand_of_the_installed_cli(seeded_runs, tmp_path, capsys):
    from fedspine_ray.cli import main

    out = tmp_path / "cli-report"
    assert main(["report", str(seeded_runs / "trial-*"), "--target", "0.6", "--out", str(out)]) == 0
    assert "Accuracy vs fedit, paired by seed" in (out / "report.md").read_text()
    assert (out / "accuracy_by_variant.png").is_file()
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedspine report: no run directories") and len(err.splitlines()) == 1


def test_report_without_matplotlib_names_the_plots_extra(seeded_runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "plots_available", lambda: False)
    out = tmp_path / "no-mpl"
    assert report.main([str(seeded_runs / "trial-*"), "--out", str(out)], prog="fedspine report") == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "fedspine report: --out draws plots with matplotlib, which is not installed; fix: pip install "
        '"fedspine-ray[plots]" (or pass --no-plots)'
    )
    assert not out.exists()  # nothing computed or written before the check
    assert report.main([str(seeded_runs / "trial-*"), "--out", str(out), "--no-plots"]) == 0
    assert (out / "report.md").is_file() and (out / "summary.parquet").is_file()
    assert not list(out.glob("*.png")) and "## Plots" not in (out / "report.md").read_text()


def test_rounds_without_evaluation_are_skipped_not_read_as_values(seeded_runs, tmp_path):
    """Rows of rounds ``training.eval_every`` skipped carry NaN accuracy: the accuracy at the horizon is the last
    evaluated round's, a target is reached at the first evaluated round past it, and the plots draw the rest."""
    rounds, clients = tables.load_runs(seeded_runs / "trial-*")
    run = "trial-fedspine-1"  # rounds at 0 / 6 / 12 / 18 s: 0.4 / 0.5 / 0.61 / 0.63
    mine = rounds[(rounds["run"] == run) & (rounds["sim_time_s"] <= 18)].sort_values("round")
    skipped = rounds.copy()
    skipped.loc[mine.index[-1], "test_accuracy"] = math.nan  # the round ending at the horizon: not evaluated
    summary = comparison.run_summary(skipped, clients, [], horizon_s=18).set_index("run")
    assert summary.loc[run, "accuracy_at_horizon"] == 0.61 == mine["test_accuracy"].iloc[-2]
    assert plots.plot_accuracy_vs_time(skipped, tmp_path / "a.png").is_file()
    assert plots.plot_accuracy_by_variant(skipped, tmp_path / "b.png").is_file()
