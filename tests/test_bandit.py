"""Bandit: convergence (stationary), re-adaptation (non-stationary), determinism, checkpointing, reward."""

from __future__ import annotations

import numpy as np
import pytest

from fedspine_ray.bandits import Arm, DeviceLearners, build_learners
from fedspine_ray.bandits.reward import fedspine_reward
from fedspine_ray.bandits.ucb import ArmGrid, DiscountedUCB, GridBandits, SlidingWindowUCB, make_bandit
from fedspine_ray.config import BanditConfig

ALGOS = [("discounted_ucb", {"gamma": 0.95, "c": 0.1}), ("sliding_window_ucb", {"window": 50, "c": 0.1})]


def _play(bandit, means_fn, rounds: int, seed: int, noise: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = []
    for t in range(rounds):
        arm = bandit.select()
        reward = float(np.clip(means_fn(t)[arm] + noise * rng.standard_normal(), 0.0, 1.0))
        bandit.update(arm, reward)
        picks.append(arm)
    return np.array(picks)


@pytest.mark.parametrize("name,kw", ALGOS)
def test_converges_on_stationary_problem(name, kw):
    means = np.array([0.2, 0.35, 0.5, 0.8, 0.6, 0.3])
    for seed in range(3):
        picks = _play(make_bandit(name, len(means), seed=seed, **kw), lambda t: means, 200, seed)
        assert (picks[-50:] == 3).mean() > 0.7


@pytest.mark.parametrize("name,kw", ALGOS)
def test_bernoulli_rewards(name, kw):
    means = np.array([0.3, 0.9, 0.5])
    rng = np.random.default_rng(0)
    b = make_bandit(name, 3, seed=0, **kw)
    picks = []
    for _ in range(300):
        a = b.select()
        b.update(a, float(rng.random() < means[a]))
        picks.append(a)
    assert (np.array(picks[-60:]) == 1).mean() > 0.7


@pytest.mark.parametrize("name,kw", ALGOS)
def test_readapts_when_device_speed_changes(name, kw):
    """Arm 3 is best until round 150 (fast device: large sub-model on time); then the device slows
    down, arm 3 now finishes late and the smaller arm 0 becomes best."""
    before = np.array([0.2, 0.35, 0.5, 0.8, 0.6, 0.3])
    after = np.array([0.8, 0.35, 0.5, 0.2, 0.6, 0.3])
    for seed in range(3):
        b = make_bandit(name, 6, seed=seed, **kw)
        picks = _play(b, lambda t: before if t < 150 else after, 300, seed)
        assert (picks[100:150] == 3).mean() > 0.7
        assert (picks[-50:] == 0).mean() > 0.7


def test_ucb1_does_not_readapt_quickly():
    """Sanity check that forgetting is what buys adaptivity: UCB1 is slower after the change."""
    before = np.array([0.2, 0.35, 0.5, 0.8, 0.6, 0.3])
    after = np.array([0.8, 0.35, 0.5, 0.2, 0.6, 0.3])
    ucb1 = _play(make_bandit("ucb1", 6, seed=0), lambda t: before if t < 150 else after, 200, 0)
    ducb = _play(DiscountedUCB(6, gamma=0.95, c=0.1, seed=0), lambda t: before if t < 150 else after, 200, 0)
    assert (ducb[150:] == 0).sum() > (ucb1[150:] == 0).sum()


@pytest.mark.parametrize("cls", [DiscountedUCB, SlidingWindowUCB])
def test_deterministic_and_checkpointable(cls):
    means = np.array([0.5, 0.5, 0.5, 0.5])  # all ties: exercises the seeded tie-breaking
    a = _play(cls(4, seed=7), lambda t: means, 60, 1)
    b = _play(cls(4, seed=7), lambda t: means, 60, 1)
    assert (a == b).all()
    # checkpoint mid-run, restore into a fresh learner, continue identically
    x = cls(4, seed=3)
    _play(x, lambda t: means, 30, 2)
    y = cls(4, seed=999)
    y.load_state_dict(x.state_dict())
    assert [x.select() for _ in range(1)] == [y.select() for _ in range(1)]
    assert np.allclose(x.indices(), y.indices())


def test_untried_arms_first_and_validation():
    b = DiscountedUCB(5, seed=0)
    seen = set()
    for _ in range(5):
        arm = b.select()
        seen.add(arm)
        b.update(arm, 0.5)
    assert seen == set(range(5))
    with pytest.raises(ValueError, match="gamma"):
        DiscountedUCB(3, gamma=1.5)
    with pytest.raises(ValueError, match="out of range"):
        b.update(9, 0.1)
    with pytest.raises(ValueError, match="unknown bandit"):
        make_bandit("thompson", 3)


def test_arm_grid_and_device_bandits():
    grid = ArmGrid([0.0, 0.3, 0.5], [4, 8])
    assert len(grid) == 6 and grid.arms[0] == (0.0, 4) and grid.arms[-1] == (0.5, 8)
    assert grid.index((0.3, 8)) == 3
    with pytest.raises(ValueError):
        ArmGrid([1.2], [4])
    db = GridBandits(grid, num_devices=3, algorithm="sliding_window_ucb", seed=11, window=20)
    db2 = GridBandits(grid, num_devices=3, algorithm="sliding_window_ucb", seed=11, window=20)
    assert isinstance(db, DeviceLearners)
    for _ in range(10):
        for d in range(3):
            arm = db.select(d)
            assert arm == db2.select(d) and grid[arm.key] == (arm.ratio, arm.rank)
            r = 1.0 - arm.ratio if d == 0 else arm.ratio  # device 0 prefers little pruning, others a lot
            db.update(d, arm, r)
            db2.update(d, arm, r)
    st = db.state_dict()
    db3 = GridBandits(grid, num_devices=3, algorithm="sliding_window_ucb", seed=0, window=20)
    db3.load_state_dict(st)
    assert [db3.select(d) for d in range(3)] == [db.select(d) for d in range(3)]


@pytest.mark.parametrize("name,kw", ALGOS)
def test_out_of_memory_skips_exploring_arms_that_need_more_memory(name, kw):
    grid = ArmGrid([0.0, 0.3, 0.6], [4, 8])
    bandits = GridBandits(grid, num_devices=1, algorithm=name, seed=0, **kw)
    oom = grid.index((0.3, 4))
    bandits.failed(0, bandits.arm(oom), 0.0)
    ruled_out = sorted(bandits.learners[0].presumed)
    assert sorted(grid[i] for i in ruled_out) == [(0.0, 4), (0.0, 8), (0.3, 8)]
    # forced exploration now visits only the arms that can fit: the two 0.6 arms, before any larger one
    first = []
    for _ in range(2):
        arm = bandits.select(0)
        first.append((arm.ratio, arm.rank))
        bandits.update(0, arm, 0.6)
    assert sorted(first) == [(0.6, 4), (0.6, 8)]
    # presumed outcomes survive a checkpoint
    restored = GridBandits(grid, num_devices=1, algorithm=name, seed=5, **kw)
    restored.load_state_dict(bandits.state_dict())
    assert np.allclose(restored.learners[0].indices(), bandits.learners[0].indices())
    # a presumed arm that gets played is scored by what it really returned
    learner = bandits.learners[0]
    learner.update(ruled_out[0], 1.0)
    assert learner.indices()[ruled_out[0]] > learner.indices()[oom]


def test_fedspine_reward():
    # on time, full progress -> 1
    assert fedspine_reward(completion_time=10, reference_time=10, loss_before=1, loss_after=0) == 1.0
    # 2x late = 1 octave of K=6 -> timeliness 5/6; progress 0.5 -> 0.3*0.5 + 0.7*5/6
    r = fedspine_reward(completion_time=20, reference_time=10, loss_before=2.0, loss_after=1.0)
    assert r == pytest.approx(0.3 * 0.5 + 0.7 * (5 / 6))
    # 2x early: idle penalty is half the lateness penalty; no loss terms -> timeliness only
    assert fedspine_reward(completion_time=5, reference_time=10) == pytest.approx(1 - 0.5 / 6)
    assert fedspine_reward(completion_time=20, reference_time=10) < fedspine_reward(
        completion_time=5, reference_time=10
    )
    # halving a very slow device's time always pays (no saturation at 30x late)
    assert fedspine_reward(completion_time=150, reference_time=10) > fedspine_reward(
        completion_time=300, reference_time=10
    )
    assert fedspine_reward(completion_time=1, reference_time=1, failed=True) == -1.0
    assert (
        fedspine_reward(completion_time=1, reference_time=1, loss_before=1.0, loss_after=float("nan")) == -1.0
    )
    for t in (0.01, 0.1, 1.0, 7.0, 100.0, 1e5):
        assert 0.0 <= fedspine_reward(completion_time=t, reference_time=5, loss_before=1, loss_after=3) <= 1.0


def test_shared_learner_pools_rewards_but_keeps_devices_in_range():
    grid = ArmGrid([0.0, 0.5], [4, 8])
    shared = GridBandits(grid, num_devices=3, seed=0, shared=True, gamma=1.0, c=0.01)
    separate = GridBandits(grid, num_devices=3, seed=0, gamma=1.0, c=0.01)
    for bandits in (shared, separate):
        for arm in range(len(grid)):  # device 0 alone learns that arm 2 is best
            bandits.update(0, bandits.arm(arm), 0.9 if arm == 2 else 0.1)
    assert shared.select(2).key == 2  # device 2 never played, yet exploits what device 0 learned
    assert separate.select(2).key in range(len(grid)) and separate.learners[2].t == 0
    assert len(shared) == 3 and len(shared.learners) == 1
    # per-device constraints still apply: only the ratio-0 arms are within this device's budget
    assert shared.select(1, cost=lambda ratio, rank: ratio, budget=0.0).key in (0, 1)
    # a device that ran out of memory at (0.0, 8) never plays it again; it stays open to the others
    shared.failed(1, shared.arm(1), -1.0)
    assert shared.blocked == {1: {1}}
    for _ in range(8):
        assert shared.select(1).key != 1
        shared.update(1, shared.select(1), 0.2)
    with pytest.raises(ValueError, match="out of range"):
        shared.select(3)
    restored = GridBandits(grid, num_devices=3, seed=5, shared=True)
    restored.load_state_dict(shared.state_dict())
    assert restored.blocked == {1: {1}}


def test_cost_budget_restricts_arms_and_falls_back_to_the_cheapest():
    """Both learner kinds play only arms whose cost fits the budget; a device never observed (budget -inf)
    plays its cheapest arm (largest ratio, smallest rank)."""
    for algorithm in ("discounted_ucb", "s_ucb"):
        config = BanditConfig(pruning_ratios=[0.0, 0.3, 0.6], ranks=[4, 8], algorithm=algorithm)
        learners = build_learners(config, num_devices=2, seed=0)

        def cheapest(ratio: float, rank: int) -> float:
            return -ratio + rank * 1e-6

        assert (learners.select(0, cheapest, -np.inf).ratio, learners.select(0, cheapest, -np.inf).rank) == (
            0.6,
            4,
        )
        for _ in range(6):
            arm = learners.select(1, cost=lambda ratio, rank: ratio, budget=0.0)
            assert isinstance(arm, Arm) and arm.ratio == 0.0
            learners.update(1, arm, 0.5)
