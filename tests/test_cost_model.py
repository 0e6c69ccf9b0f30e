"""The round policies (``rounds.*``): the round-time model's speed estimates, the budget, FedSpine's arm
filter, fill for every method, and the work of an arm against what the runtime really moves."""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from fedspine_ray.bandits import Arm
from fedspine_ray.bandits.sucb import SmoothUCB
from fedspine_ray.bandits.ucb import DiscountedUCB, SlidingWindowUCB
from fedspine_ray.messages import ClientOutcome, tensor_bytes
from fedspine_ray.rounds.time_model import ArmWork, DeviceTimeModel, round_budget
from fedspine_ray.strategies import build_strategy

from .test_strategies import make_context


def _phases(work: ArmWork, s_per_unit: float, s_per_byte_down: float, s_per_byte_up: float):
    return work.compute * s_per_unit, work.bytes_down * s_per_byte_down, work.bytes_up * s_per_byte_up


def test_one_observed_round_predicts_every_other_arm_of_a_steady_device():
    model = DeviceTimeModel(gamma=0.7)
    assert not model.knows(3) and math.isnan(model.predict(3, ArmWork(1.0, 1.0, 1.0)))
    speeds = (2e-6, 1e-7, 4e-7)  # s per compute unit, per byte down, per byte up
    played = ArmWork(compute=5e6, bytes_down=9e7, bytes_up=2e6)  # first round: whole model down
    model.observe(3, played, *_phases(played, *speeds))
    assert model.knows(3)
    for other in (ArmWork(2e6, 1e6, 1e6), ArmWork(8e6, 3e7, 4e6)):
        assert model.predict(3, other) == pytest.approx(sum(_phases(other, *speeds)), rel=1e-9)
    assert not model.knows(4)  # devices are independent


def test_speed_estimates_follow_a_device_that_slows_down():
    model = DeviceTimeModel(gamma=0.5)
    work = ArmWork(1e6, 1e6, 1e6)
    for _ in range(3):
        model.observe(0, work, *_phases(work, 1e-6, 1e-8, 1e-8))
    for _ in range(6):  # thermal throttling: compute 4x slower from now on
        model.observe(0, work, *_phases(work, 4e-6, 1e-8, 1e-8))
    compute_rate, down_rate, _ = model.rates(0)
    assert compute_rate == pytest.approx(4e-6, rel=0.05) and down_rate == pytest.approx(1e-8)


def test_unmeasured_phases_predict_compute_only_and_state_round_trips():
    model = DeviceTimeModel()
    work = ArmWork(1e6, 5e7, 1e6)
    model.observe(1, work, 3.0, math.nan, math.nan)  # wall clock: transfers are not timed
    assert model.predict(1, ArmWork(2e6, 1e9, 1e9)) == pytest.approx(6.0)
    restored = DeviceTimeModel(gamma=0.9)
    restored.load_state_dict(model.state_dict())
    assert restored.predict(1, work) == model.predict(1, work) and restored.gamma == model.gamma
    with pytest.raises(ValueError, match="gamma"):
        DeviceTimeModel(gamma=0.0)


def test_round_budget_is_the_slowest_fastest_arm_with_slack():
    assert round_budget([1.0, 4.0, math.nan, 2.5], slack=0.1) == pytest.approx(4.4)
    assert round_budget([math.nan], slack=0.1) == math.inf and round_budget([], slack=0.0) == math.inf
    with pytest.raises(ValueError, match="slack"):
        round_budget([1.0], slack=-0.1)


@pytest.mark.parametrize(
    "learner", [DiscountedUCB(6, gamma=0.9, seed=1), SlidingWindowUCB(6, window=20, seed=1)]
)
def test_ucb_plays_and_explores_only_allowed_arms(learner):
    allowed = np.array([False, True, False, True, True, False])
    played = []
    for _ in range(30):
        arm = learner.select(allowed)
        played.append(arm)
        learner.update(arm, 0.9 if arm == 3 else 0.2)
    assert set(played) == {1, 3, 4}  # every allowed arm explored, no other ever played
    assert played[-10:].count(3) >= 8  # and the best allowed one exploited
    assert learner.select() in {0, 2, 5}  # without the mask the never-played arms come first again
    with pytest.raises(ValueError, match="allowed"):
        learner.select(np.zeros(6, dtype=bool))


def test_sucb_refines_only_within_the_budget_and_falls_back_to_the_cheapest_leaf():
    sucb = SmoothUCB([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [2, 4, 8], seed=0, split_after=1.0)
    cost = lambda ratio, rank: (1.0 - ratio) * rank  # noqa: E731 - a device's predicted seconds
    for _ in range(25):
        ratio, rank, cell = sucb.select(cost, budget=2.0)
        assert cost(ratio, rank) <= 2.0 + 1e-9
        sucb.update(ratio, rank, 1.0 - abs(ratio - 0.5), cell)
    assert len(sucb.leaves()) > 1
    assert sucb.select(cost, budget=-math.inf)[:2] == (0.6, 2)  # nothing fits: the cheapest point


def test_arm_work_matches_the_submodel_and_the_bytes_a_derivation_moves(tiny_llama_dir):
    ctx, _ = make_context(
        tiny_llama_dir,
        method={"name": "fedspine"},
        pruning={"target_sparsity": 0.4, "importance": "magnitude", "end_fraction": 1.0},
        bandit={"pruning_ratios": [0.0, 0.5], "ranks": [2, 4]},
    )
    held: dict[int, tuple[int, float]] = {}
    ctx.held_base = held.get  # what the server tracks: the base each client holds
    strategy = build_strategy("fedspine")
    strategy.setup(ctx)
    strategy.configure_round(1, [0, 1])
    element = 4
    for ratio in (0.0, 0.5):
        sub = strategy._submodel(ratio)[0]()
        work = strategy.arm_work(0, ratio, 4)
        linear = sum(m.weight.numel() for m in sub.modules() if isinstance(m, torch.nn.Linear))
        assert work.compute == linear  # training FLOPs per token are proportional to it
        adapters = work.bytes_up
        assert work.bytes_down == pytest.approx(sum(p.numel() for p in sub.parameters()) * element + adapters)
    assert strategy.arm_work(0, 0.0, 4).bytes_up == pytest.approx(
        2 * strategy.arm_work(0, 0.0, 2).bytes_up - tensor_bytes(strategy.head)
    )
    # a device holding the dense model needs nothing more for a sub-model of it ...
    held[1] = (0, 0.0)
    strategy.configure_round(1, [0, 1])  # a new round forgets the per-holding cache
    assert strategy.arm_work(1, 0.5, 4).bytes_down == pytest.approx(strategy.arm_work(1, 0.5, 4).bytes_up)
    # ... and one holding the half model, after a global prune, exactly the units its derivation sends
    held[1] = (0, 0.5)
    strategy.factors = {k: (a, torch.randn_like(b) * 0.05) for k, (a, b) in strategy.factors.items()}
    assert strategy.global_prune_step(1)
    strategy.configure_round(2, [0, 1])
    work = strategy.arm_work(1, 0.0, 4)
    derivation = strategy.derivation((0, 0.5), (strategy.version, 0.0))
    assert tensor_bytes(derivation.new_units) > 0
    assert work.bytes_down - work.bytes_up == pytest.approx(tensor_bytes(derivation.new_units))


def test_fedspine_plays_only_arms_within_the_budget(tiny_llama_dir):
    ctx, _ = make_context(
        tiny_llama_dir,
        method={"name": "fedspine"},
        pruning={"target_sparsity": 0.0},
        bandit={"pruning_ratios": [0.0, 0.3, 0.6], "ranks": [2, 4]},
        rounds={"time_slack": 0.0},
    )
    held: dict[int, tuple[int, float]] = {}
    ctx.held_base = held.get
    strategy = build_strategy("fedspine")
    strategy.setup(ctx)
    first = strategy.configure_round(1, [0, 1])
    assert {(a.pruning_ratio, a.rank) for a in first.values()} == {(0.6, 2)}  # unknown: cheapest arm
    slow, fast = 1e-5, 1e-8  # client 0 is a thousand times slower
    for cid, rate in ((0, slow), (1, fast)):
        work = strategy.arm_work(cid, 0.6, 2)
        strategy.policy.observe(cid, work, *_phases(work, rate, rate / 100, rate / 100))
        held[cid] = (strategy.version, 0.6)
    for rnd in range(2, 9):
        assignments = strategy.configure_round(rnd, [0, 1])
        budget = strategy.policy.budget
        assert budget == pytest.approx(strategy.predicted_time(0, 0.6, 2))
        assert (assignments[0].pruning_ratio, assignments[0].rank) == (0.6, 2)
        assert strategy.predicted_time(1, assignments[1].pruning_ratio, assignments[1].rank) <= budget
        for cid, assignment in assignments.items():
            strategy.bandits.update(cid, Arm(assignment.pruning_ratio, assignment.rank, assignment.arm), 0.5)
    # the fast device explored arms the slow one never touched, within the same budget
    assert strategy.bandits.learners[1].counts.astype(bool).sum() == 6
    assert strategy.bandits.learners[0].counts.astype(bool).sum() == 1
    copy.deepcopy(strategy.state_dict())  # checkpointable


def test_shared_learner_blocks_out_of_memory_arms_for_that_device_only(tiny_llama_dir):
    ctx, _ = make_context(
        tiny_llama_dir,
        method={"name": "fedspine"},
        pruning={"target_sparsity": 0.0},
        bandit={"pruning_ratios": [0.0, 0.5], "ranks": [2, 4], "shared": True},
        rounds={"time_model": False},
    )
    strategy = build_strategy("fedspine")
    strategy.setup(ctx)
    assignments = strategy.configure_round(1, [0, 1])
    big = strategy.bandits.arm_grid.index((0.0, 4))
    assignment = dataclasses.replace(assignments[0], arm=big, pruning_ratio=0.0, rank=4)
    strategy.after_aggregation(1, [ClientOutcome(0, assignment, 10, fits_memory=False)])
    assert strategy.bandits.blocked == {0: {big}}  # only the largest arm needs at least that much memory
    for rnd in range(2, 8):
        chosen = strategy.configure_round(rnd, [0, 1])
        assert chosen[0].arm != big
        for cid, a in chosen.items():
            strategy.bandits.update(cid, Arm(a.pruning_ratio, a.rank, a.arm), 0.5)


@pytest.mark.parametrize("fast_rate", [1e-8, 2e-6])
def test_fill_budget_gives_early_devices_the_steps_that_fit_before_the_slowest_ends(
    tiny_llama_dir, fast_rate
):
    ctx, _ = make_context(
        tiny_llama_dir,
        method={"name": "fedspine"},
        pruning={"target_sparsity": 0.0},
        training={"rounds": 1, "local_steps": 6},
        bandit={"pruning_ratios": [0.0, 0.3, 0.6], "ranks": [2, 4]},
        rounds={"time_slack": 0.1, "fill": True, "fill_max_factor": 3.0},
    )
    held: dict[int, tuple[int, float]] = {}
    ctx.held_base = held.get
    strategy = build_strategy("fedspine")
    strategy.setup(ctx)
    first = strategy.configure_round(1, [0, 1])
    assert all(a.local_steps is None for a in first.values())  # nothing observed yet: nothing to fill
    for cid, rate in ((0, 1e-5), (1, fast_rate)):  # client 0 is the slowest
        work = strategy.arm_work(cid, 0.6, 2)
        strategy.policy.observe(cid, work, *_phases(work, rate, rate / 100, rate / 100))
        held[cid] = (strategy.version, 0.6)
    time_model = strategy.policy.time_model
    speeds = {cid: time_model.rates(cid) for cid in (0, 1)}
    assignments = strategy.configure_round(2, [0, 1])
    end = strategy.policy.budget / 1.1  # the slowest device's predicted time at its cheapest arm
    assert assignments[0].local_steps is None  # the slowest device keeps its steps
    fast = assignments[1]
    work = strategy.arm_work(1, fast.pruning_ratio, fast.rank)
    per_compute, per_down, per_up = speeds[1]
    transfer = work.bytes_down * per_down + work.bytes_up * per_up
    expected = min(18, math.floor(6 * (end - transfer) / (work.compute * per_compute)))
    assert fast.local_steps == expected and expected > 6
    if fast_rate < 1e-6:
        assert expected == 18  # a device 1,000x faster stops at fill_max_factor x local_steps
    else:
        assert expected < 18  # a device 5x faster fills the round, and no more
    filled = strategy._round_work[1]  # what the time model will be told it did
    assert filled.compute == pytest.approx(work.compute * expected / 6)
    assert time_model.predict(1, filled) <= end + 1e-12
    # observing the filled round at the same speed leaves the speed estimate where it was
    time_model.observe(1, filled, *_phases(filled, fast_rate, fast_rate / 100, fast_rate / 100))
    assert time_model.rates(1)[0] == pytest.approx(speeds[1][0])


def test_prefer_dense_gives_devices_that_keep_up_the_unpruned_arm_and_leaves_the_rest_to_the_bandit(
    tiny_llama_dir,
):
    ctx, _ = make_context(
        tiny_llama_dir,
        method={"name": "fedspine"},
        pruning={"target_sparsity": 0.0},
        bandit={"pruning_ratios": [0.0, 0.3, 0.6], "ranks": [2, 4], "prefer_dense": True},
        rounds={"time_slack": 0.0},
    )
    held: dict[int, tuple[int, float]] = {}
    ctx.held_base = held.get
    strategy = build_strategy("fedspine")
    strategy.setup(ctx)
    strategy.configure_round(1, [0, 1])
    for cid, rate in ((0, 1e-5), (1, 1e-8)):  # client 0 a thousand times slower: it sets the budget
        work = strategy.arm_work(cid, 0.6, 2)
        strategy.policy.observe(cid, work, *_phases(work, rate, rate / 100, rate / 100))
        held[cid] = (strategy.version, 0.6)
    for rnd in range(2, 6):
        assignments = strategy.configure_round(rnd, [0, 1])
        assert (assignments[1].pruning_ratio, assignments[1].rank) == (
            0.0,
            4,
        )  # keeps up: dense, largest rank
        assert (assignments[0].pruning_ratio, assignments[0].rank) == (0.6, 2)  # the bandit's, within budget
        for cid, a in assignments.items():
            strategy.bandits.update(cid, Arm(a.pruning_ratio, a.rank, a.arm), 0.5)
    # out of memory on the dense arm: from then on the device's bandit decides again
    dense = dataclasses.replace(assignments[1])
    strategy.after_aggregation(5, [ClientOutcome(1, dense, 30, fits_memory=False)])
    assert strategy.dense_failed == {1}
    played = {
        (a.pruning_ratio, a.rank) for r in range(6, 12) for a in [strategy.configure_round(r, [0, 1])[1]]
    }
    assert played != {(0.0, 4)}
