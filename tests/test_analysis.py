"""analysis/: tables and plots over real Parquet run directories with the runtime's schema."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from analysis import report, tables
from fedspine_ray.results import CLIENTS_FILE, ROUNDS_FILE


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
    assert "Speedup vs fedit" in printed and "fedspine-a" in printed
    text = (out / "report.md").read_text()
    assert "| run |" in text and "accuracy_vs_sim_time.png" in text
    assert len(list(out.glob("*.png"))) == 1 + 3  # accuracy + one arm plot per run with client rows
    assert report.main([str(tmp_path / "nothing-here")]) == 2
