"""S-UCB over the continuous (ratio, rank) space, and the multi-term reward."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedspine_ray.bandits.reward import multi_term_reward, pruning_progress, timeliness
from fedspine_ray.bandits.sucb import DeviceSUCB, SmoothUCB, allowed_ranks, allowed_ratios
from fedspine_ray.config import ConfigError, ExperimentConfig

RATIOS = allowed_ratios(0.0, 0.8, 0.05)  # 17 values
RANKS = allowed_ranks(2, 32)  # 31 values, log2-spaced coordinates


def _coords(ratio: float, rank: int) -> tuple[float, float]:
    return ratio / 0.8, (math.log2(rank) - 1) / 4


def _bump(ratio: float, rank: int, opt: tuple[float, float]) -> float:
    u, v = _coords(ratio, rank)
    return 0.9 - 1.2 * ((u - opt[0]) ** 2 + (v - opt[1]) ** 2)


def _play(b: SmoothUCB, rounds: int, seed: int, opt_fn, noise: float = 0.1) -> list[tuple[float, int]]:
    rng = np.random.default_rng(seed)
    points = []
    for t in range(rounds):
        ratio, rank, cell = b.select()
        b.update(ratio, rank, _bump(ratio, rank, opt_fn(t)) + noise * rng.standard_normal(), cell)
        points.append((ratio, rank))
    return points


def _near(points, opt, radius: float = 0.25) -> float:
    return float(np.mean([math.dist(_coords(p, r), opt) <= radius for p, r in points]))


def _leaf_depth_at(b: SmoothUCB, u: float, v: float) -> int:
    ratio = RATIOS[int(np.argmin(np.abs(np.array(RATIOS) / 0.8 - u)))]
    rank = RANKS[int(np.argmin(np.abs((np.log2(RANKS) - 1) / 4 - v)))]
    return b.depth(b.cell_of(ratio, rank))


def test_allowed_values_snap_to_resolution():
    assert allowed_ratios(0.0, 0.6, 0.05) == [round(0.05 * i, 6) for i in range(13)]
    assert allowed_ratios(0.1, 0.52, 0.2) == [0.1, 0.3, 0.5, 0.52]  # the upper end is always playable
    assert allowed_ranks(4, 8) == [4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="ratio_step"):
        allowed_ratios(0.0, 0.5, 0.0)
    b = SmoothUCB(RATIOS, RANKS, seed=0)
    for _ in range(30):
        ratio, rank, cell = b.select()
        assert ratio in RATIOS and rank in RANKS and cell in b.leaves()
        b.update(ratio, rank, 0.5, cell)


def test_refines_toward_the_best_region_of_a_smooth_bump():
    opt = (0.7, 0.3)  # ratio 0.56, rank ~4.6
    for seed in range(3):
        b = SmoothUCB(RATIOS, RANKS, gamma=0.98, c=0.05, seed=seed)
        points = _play(b, 120, seed, lambda t: opt)
        assert _near(points[-60:], opt) > 0.6, points[-60:]
        # the partition is finer where the optimum is than in the far corner
        assert _leaf_depth_at(b, *opt) > _leaf_depth_at(b, 0.0, 1.0) + 2
        # and the played points get better: mean true reward of the late plays beats the early ones
        late = np.mean([_bump(p, r, opt) for p, r in points[-60:]])
        assert late > np.mean([_bump(p, r, opt) for p, r in points[:20]]) and late > 0.8


def test_settles_within_ten_rounds_without_forced_exploration():
    """The grid learner's weakness (issue 9): 10 rounds, and the first ones all forced exploration."""
    for seed in range(5):
        b = SmoothUCB(allowed_ratios(0.0, 0.6, 0.05), allowed_ranks(4, 8), seed=seed)
        rng = np.random.default_rng(seed)
        played = []
        for _ in range(10):  # a slow device: timeliness rises with the ratio, best at 0.6
            ratio, rank, cell = b.select()
            b.update(ratio, rank, 0.4 + 0.5 * ratio / 0.6 + 0.05 * rng.standard_normal(), cell)
            played.append(ratio)
        assert np.mean(played[-4:]) >= 0.45, played
        assert len(set(played)) < 10  # it revisits good points instead of sweeping the space


def test_readapts_when_the_optimum_moves():
    before, after = (0.7, 0.3), (0.15, 0.85)
    for seed in range(3):
        b = SmoothUCB(RATIOS, RANKS, gamma=0.95, c=0.05, seed=seed)
        points = _play(b, 220, seed, lambda t: before if t < 100 else after)
        assert _near(points[60:100], before) > 0.55
        assert _near(points[-50:], after) > 0.6, points[-50:]


def test_deterministic_and_state_round_trips():
    opt = (0.4, 0.6)
    a, b = SmoothUCB(RATIOS, RANKS, seed=5), SmoothUCB(RATIOS, RANKS, seed=5)
    assert _play(a, 40, 1, lambda t: opt) == _play(b, 40, 1, lambda t: opt)
    x = SmoothUCB(RATIOS, RANKS, seed=3)
    _play(x, 25, 2, lambda t: opt)
    y = SmoothUCB(RATIOS, RANKS, seed=999, c=0.5)
    import json

    y.load_state_dict(json.loads(json.dumps(x.state_dict())))  # plain JSON survives
    assert y.indices() == pytest.approx(x.indices())
    assert _play(x, 15, 9, lambda t: opt) == _play(y, 15, 9, lambda t: opt)
    with pytest.raises(ValueError, match="allowed ratios"):
        SmoothUCB(RATIOS[:-1], RANKS).load_state_dict(x.state_dict())


def test_device_sucb_learns_per_device():
    devices = DeviceSUCB(allowed_ratios(0.0, 0.6, 0.1), allowed_ranks(2, 8), num_devices=2, seed=1)
    late = {0: [], 1: []}
    for t in range(25):
        for d in (0, 1):
            arm = devices.select(d)
            reward = arm.ratio if d == 0 else 1.0 - arm.ratio  # device 0 slow: prune; device 1 fast: don't
            devices.update(d, arm, reward)
            if t >= 15:
                late[d].append(arm.ratio)
    assert np.mean(late[0]) > 0.4 > 0.2 > np.mean(late[1])
    clone = DeviceSUCB(allowed_ratios(0.0, 0.6, 0.1), allowed_ranks(2, 8), num_devices=2, seed=0)
    clone.load_state_dict(devices.state_dict())
    assert [clone.select(d) for d in (0, 1)] == [devices.select(d) for d in (0, 1)]


def test_multi_term_reward_and_terms():
    weights = {"loss": 0.15, "pruning": 0.1, "update": 0.15, "time": 0.6}
    perfect = {"loss": 1.0, "pruning": 1.0, "update": 1.0, "time": 1.0}
    assert multi_term_reward(perfect, weights) == pytest.approx(1.0)
    assert multi_term_reward({**perfect, "time": 0.5}, weights) == pytest.approx(1 - 0.6 * 0.5)
    assert multi_term_reward({"time": 0.5}, weights) == pytest.approx(0.5)  # missing terms renormalised
    assert multi_term_reward({**perfect, "update": 7.0}, weights) == pytest.approx(1.0)  # clipped
    assert multi_term_reward(perfect, weights, failed=True) == -1.0
    assert multi_term_reward({**perfect, "loss": math.nan}, weights) == -1.0  # diverged
    with pytest.raises(ValueError, match="weights"):
        multi_term_reward(perfect, {"speed": 1.0})
    # pruning progress: sub-model sparsity toward the target, capped; neutral without a target
    assert pruning_progress(0.0, 0.15, 0.3) == pytest.approx(0.5)
    assert pruning_progress(0.5, 0.15, 0.3) == 1.0
    assert pruning_progress(0.2, 0.0, 0.0) == 1.0
    assert timeliness(20, 10) == pytest.approx(5 / 6) and timeliness(5, 10) == pytest.approx(1 - 0.5 / 6)


def test_config_fields():
    cfg = ExperimentConfig().with_overrides(
        {"bandit.algorithm": "s_ucb", "bandit.ratio_step": 0.1, "bandit.reward_weights": {"time": 1.0}}
    )
    assert cfg.bandit.algorithm == "s_ucb" and cfg.bandit.reward == "multi_term"
    with pytest.raises(ConfigError, match="bandit.reward_weights"):
        ExperimentConfig().with_overrides({"bandit.reward_weights": {"speed": 1.0}})
    with pytest.raises(ConfigError, match="bandit.ratio_step"):
        ExperimentConfig().with_overrides({"bandit.ratio_step": 0.0})
    with pytest.raises(ConfigError, match="bandit.reward"):
        ExperimentConfig().with_overrides({"bandit.reward": "accuracy"})


def test_fedspine_with_sucb_end_to_end(ray_session, tiny_llama_dir, tiny_text_csv, tmp_path):
    """Real Ray actors, tiny LLaMA, a 20x slow and a fast device class: S-UCB prunes the slow ones more."""
    import yaml

    from fedspine_ray.launch.results import read_run
    from fedspine_ray.runner import run_experiment

    from .test_e2e_fedspine import PROFILES, fedspine_config

    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(yaml.safe_dump(PROFILES))
    config = fedspine_config(tiny_llama_dir, tiny_text_csv, tmp_path / "sucb", profiles).with_overrides(
        {
            "training.rounds": 8,
            "bandit.algorithm": "s_ucb",
            "bandit.pruning_ratios": [0.0, 0.6],
            "bandit.ranks": [2, 4],
            "bandit.ratio_step": 0.2,
        }
    )
    run_experiment(config, progress=False)
    rounds, clients = read_run(tmp_path / "sucb")
    assert len(clients) == 4 * 8 and (clients["status"] == "ok").all()
    assert clients["pruning_ratio"].isin([0.0, 0.2, 0.4, 0.6]).all()  # snapped to ratio_step
    assert clients["lora_rank"].isin([2, 3, 4]).all() and clients["arm"].ge(0).all()
    assert clients["reward"].between(0, 1).all()
    late = clients[clients["round"] >= 4].groupby("device_class")["pruning_ratio"].mean()
    assert late["slow_box"] > late["fast_box"], late
    assert rounds["sparsity"].iloc[-1] == pytest.approx(0.5, abs=0.05)
    assert np.isfinite(rounds["test_accuracy"]).all()
