"""FLoRA, HetLoRA's published options, the FedLPS-style P-UCBV baseline and LEGEND-style depth (issue 26).

Aggregation rules and bandit formulas against hand computations, the strategies without Ray, and each method
end to end through real Ray on the tiny LLaMA.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from fedspine_ray.bandits import PUCBV, DevicePUCBV
from fedspine_ray.devices.workload import backward_reach, task_cost
from fedspine_ray.messages import ClientOutcome, tensor_bytes
from fedspine_ray.modeling.adapters import lora_target_shapes
from fedspine_ray.pruning import merge_lora_delta
from fedspine_ray.strategies import build_strategy
from fedspine_ray.strategies.aggregate import ClientLoRA, get_aggregator
from fedspine_ray.strategies.fedlps import fedlps_reward, soft_accuracy, utility
from fedspine_ray.strategies.hetlora import energy
from fedspine_ray.strategies.lora import LoRAStrategy

from .test_baselines import run_method
from .test_strategies import make_context


def _outcome(cid, assignment, ctx, factors, loss_mean=0.5, sim_time_s=2.0):
    outcome = ClientOutcome(
        cid, assignment, ctx.client_num_samples[cid], factors=factors, head=assignment.head
    )
    outcome.loss_first, outcome.loss_last, outcome.loss_mean = 1.0, loss_mean, loss_mean
    outcome.sim_time_s = sim_time_s
    return outcome


def _trained(assignment, seed):
    """Made-up trained factors of an assignment's shapes (B non-zero)."""
    g = torch.Generator().manual_seed(seed)
    return {
        name: (a + 0.1 * torch.randn(a.shape, generator=g), 0.1 * torch.randn(b.shape, generator=g))
        for name, (a, b) in assignment.factors.items()
    }


def _weights(model):
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


# ------------------------------------------------------------------ aggregation by hand
def test_flora_stacked_product_is_the_sum_of_local_products_exactly():
    """Integer-valued factors and dyadic weights (1/4, 3/4): every step is exact in float64."""
    g = torch.Generator().manual_seed(0)
    a1, b1 = (
        torch.randint(-3, 4, (2, 4), generator=g).double(),
        torch.randint(-3, 4, (5, 2), generator=g).double(),
    )
    a2, b2 = (
        torch.randint(-3, 4, (3, 4), generator=g).double(),
        torch.randint(-3, 4, (5, 3), generator=g).double(),
    )
    a3, b3 = (
        torch.randint(-3, 4, (1, 4), generator=g).double(),
        torch.randint(-3, 4, (5, 1), generator=g).double(),
    )
    updates = [
        ClientLoRA({"q": (a1, b1), "v": (a3, b3)}, 10),
        ClientLoRA({"q": (a2, b2)}, 30),
    ]
    out = get_aggregator("flora").aggregate(updates, global_rank=3)
    a, b = out["q"]
    assert a.shape == (5, 4) and b.shape == (5, 5)  # rank 2 + 3: global_rank is not a cap
    # p_k on A only, B unweighted, in the clients' order
    assert torch.equal(a, torch.cat([0.25 * a1, 0.75 * a2])) and torch.equal(b, torch.cat([b1, b2], 1))
    assert torch.equal(b @ a, 0.25 * b1 @ a1 + 0.75 * b2 @ a2)
    # a module one client sent is that client's own product (weight renormalised over who sent it)
    assert torch.equal(out["v"][1] @ out["v"][0], b3 @ a3)


def test_hetlora_norm_weighting_matches_a_hand_computation(tiny_llama_dir):
    ctx, _ = make_context(tiny_llama_dir, method={"name": "hetlora", "hetlora": {"weighting": "norm"}})
    strategy = build_strategy("hetlora")
    strategy.setup(ctx)
    assert strategy.aggregator.name == "hetlora_sw"
    assignments = strategy.configure_round(1, [0, 1])
    factors = {cid: _trained(a, cid) for cid, a in assignments.items()}
    strategy.aggregate_round(1, [_outcome(cid, assignments[cid], ctx, f) for cid, f in factors.items()])
    rank = strategy.global_rank
    for name in factors[0]:
        norms = [math.sqrt(energy(*factors[cid][name])) for cid in (0, 1)]
        w = [n / sum(norms) for n in norms]  # replaces the sample weights 10/40, 30/40
        expected_a = torch.zeros(rank, factors[0][name][0].shape[1], dtype=torch.float64)
        expected_b = torch.zeros(factors[0][name][1].shape[0], rank, dtype=torch.float64)
        for weight, cid in zip(w, (0, 1), strict=True):
            a, b = factors[cid][name]
            expected_a[: a.shape[0]] += weight * a.double()
            expected_b[:, : b.shape[1]] += weight * b.double()
        torch.testing.assert_close(strategy.factors[name][0].double(), expected_a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(strategy.factors[name][1].double(), expected_b, rtol=1e-5, atol=1e-6)
        # energy() is ||B A||_F^2 without forming B A
        a, b = factors[0][name]
        assert energy(a, b) == pytest.approx(
            float(torch.linalg.matrix_norm(b.double() @ a.double())) ** 2, rel=1e-9
        )
    # method.aggregation still overrides the option
    ctx2, _ = make_context(
        tiny_llama_dir, method={"name": "hetlora", "aggregation": "hetlora", "hetlora": {"weighting": "norm"}}
    )
    overridden = build_strategy("hetlora")
    overridden.setup(ctx2)
    assert overridden.aggregator.name == "hetlora"


def test_hetlora_self_prunes_a_weak_tail_and_the_server_tracks_the_rank(tiny_llama_dir):
    ctx, _ = make_context(
        tiny_llama_dir,
        method={"name": "hetlora", "hetlora": {"self_prune": True, "prune_threshold": 0.5}},
        bandit={"ranks": [2, 4]},
    )
    strategy = build_strategy("hetlora")
    strategy.setup(ctx)
    assert strategy.client_rank == {0: 2, 1: 4}
    assignments = strategy.configure_round(1, [0, 1])
    factors = {cid: _trained(a, cid) for cid, a in assignments.items()}
    for a, _ in factors[1].values():  # client 1 (rank 4): slice 3 = floor(0.99 * 4) carries almost nothing
        a[3:] *= 1e-3
    # by hand: tail energy share vs 0.5 * (4 - 3) / 4 of the total
    total = sum(energy(a, b) for a, b in factors[1].values())
    tail = sum(energy(a[3:], b[:, 3:]) for a, b in factors[1].values())
    assert tail < 0.5 * 0.25 * total
    assert strategy.pruned_rank(4, factors[1]) == 3
    # client 0 (rank 2 -> floor(1.98) = 1): its second slice is as strong as the first, so it keeps rank 2
    assert strategy.pruned_rank(2, factors[0]) == 2
    outcomes = [_outcome(cid, assignments[cid], ctx, f) for cid, f in factors.items()]
    metrics = strategy.aggregate_round(1, outcomes)
    assert metrics["rank_prunes"] == 1.0 and strategy.client_rank == {0: 2, 1: 3}
    assert outcomes[1].factors[next(iter(factors[1]))][0].shape[0] == 3  # the truncated upload was aggregated
    later = strategy.configure_round(2, [0, 1])
    assert later[1].rank == 3 and later[0].rank == 2  # the pruned rank sticks; the global rank stays 4
    assert strategy.global_rank == 4


# ------------------------------------------------------------------ P-UCBV by hand
def test_pucbv_index_split_and_schedules_follow_the_authors_code():
    learner = PUCBV(0.0, 0.5, arms=5, horizon=10.0, seed=3)
    assert np.allclose(learner.intervals, [[0.5, 0.6], [0.6, 0.7], [0.7, 0.8], [0.8, 0.9], [0.9, 1.0]])
    # index by hand: T = 10, K = 5, phi = T / K^2 = 0.4, eps = 1 -> ln(phi T eps) = ln 4
    learner.rewards[2] = [0.0, 1.0, 3.0]
    learner.pulls[2] = 3.0
    mean, var = 4.0 / 3.0, float(np.var([0.0, 1.0, 3.0]))
    assert learner.scores()[2] == pytest.approx(mean + math.sqrt((var + 2) * math.log(4.0) / (8 * 3.0)))
    assert learner.scores()[0] == pytest.approx(math.sqrt(2 * math.log(4.0) / 8))  # rewards [0], one pull
    keep, played = learner.select()  # the first two decisions explore uniformly
    assert learner.explore == 1.0 and learner.eps == 0.5 and len(learner.intervals) == 6
    position = learner.ids.index(played)
    left, right = learner.intervals[position]
    assert left == keep and learner.intervals[position - 1][1] == keep  # split at the point played
    assert learner.pulls[position] == learner.pulls[position - 1] + 1  # the played half counts the pull
    assert learner.rewards[position] == learner.rewards[position - 1]  # and copies the history
    learner.update(played, 2.5)
    assert learner.rewards[position][-1] == 2.5 and learner.rewards[position - 1][-1] != 2.5
    learner.select()
    assert learner.explore == 0.5 and learner.eps == 0.25
    # once ln(phi T eps) <= 0 the index is the mean; with exploration off the best mean is played
    learner.explore, learner.eps = 0.0, 1e-6
    best = int(np.argmax([np.mean(r) for r in learner.rewards]))
    best_interval = list(learner.intervals[best])
    assert learner.scores() == pytest.approx([float(np.mean(r)) for r in learner.rewards])
    keep, _ = learner.select()
    assert best_interval[0] <= keep <= best_interval[1]
    # elimination keeps at least one interval
    lonely = PUCBV(0.0, 0.5, arms=1, horizon=10.0)
    lonely.eliminate(0)
    assert len(lonely.intervals) == 1


def test_device_pucbv_snaps_ratios_fails_by_deleting_and_resumes():
    learners = DevicePUCBV(0.0, 0.6, rank=8, num_devices=2, seed=1, arms=5, horizon=2.5, ratio_step=0.05)
    arm = learners.select(0)
    assert arm.rank == 8 and 0.0 <= arm.ratio <= 0.6
    assert arm.ratio == pytest.approx(round(arm.ratio / 0.05) * 0.05)
    assert len(learners.learners[0].intervals) == 6 and len(learners.learners[1].intervals) == 5  # per device
    learners.failed(0, arm, 0.0)
    assert arm.key not in learners.learners[0].ids
    state = learners.state_dict()
    resumed = DevicePUCBV(0.0, 0.6, rank=8, num_devices=2, seed=99, arms=5, horizon=2.5, ratio_step=0.05)
    resumed.load_state_dict(copy.deepcopy(state))
    assert [learners.select(d) for d in (0, 1, 0)] == [resumed.select(d) for d in (0, 1, 0)]


def test_fedlps_reward_is_utility_gain_per_second():
    assert utility(0.0) == 0.0 and utility(1.0) == pytest.approx(10 - 20 / (1 + math.exp(0.35)))
    assert soft_accuracy(math.log(2)) == pytest.approx(0.5)
    assert fedlps_reward(0.5, 0.25, 4.0) == pytest.approx((utility(0.5) - utility(0.25)) / 4.0)
    assert fedlps_reward(0.25, 0.5, 4.0) < 0  # no better than the best so far: a negative reward


# ------------------------------------------------------------------ strategies without Ray
def test_flora_merges_the_stack_into_the_base_and_devices_replay_it(tiny_llama_dir):
    ctx, batch = make_context(tiny_llama_dir, method={"name": "flora"}, bandit={"ranks": [2, 4]})
    ctx.held_base = lambda cid: (0, 0.0)  # both devices hold version 0 after round 1's download
    strategy = build_strategy("flora")
    strategy.setup(ctx)
    assert strategy.client_rank == {0: 2, 1: 4}
    before = copy.deepcopy(ctx.global_model)
    assignments = strategy.configure_round(1, [0, 1])
    for cid, assignment in assignments.items():  # fresh PEFT-style adapters at the client's rank
        assert assignment.rank == strategy.client_rank[cid]
        for a, b in assignment.factors.values():
            assert a.shape[0] == assignment.rank and not torch.any(b) and torch.any(a)
    name = next(iter(assignments[0].factors))
    assert not torch.equal(assignments[0].factors[name][0], assignments[1].factors[name][0][:2])  # own draws
    factors = {cid: _trained(a, cid) for cid, a in assignments.items()}
    metrics = strategy.aggregate_round(
        1, [_outcome(cid, assignments[cid], ctx, f) for cid, f in factors.items()]
    )
    assert metrics["stacked_rank"] == 6.0 and strategy.version == 1
    merged = _weights(ctx.global_model)
    for module, weight in _weights(before).items():
        if module not in factors[0]:
            assert torch.equal(merged[module], weight)
            continue
        delta = sum(
            w * factors[cid][module][1] @ factors[cid][module][0] for w, cid in ((0.25, 0), (0.75, 1))
        )
        torch.testing.assert_close(merged[module], weight + delta, rtol=1e-5, atol=1e-6)
    # the global adapter is empty again: evaluating it is evaluating the merged base
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    torch.testing.assert_close(
        strategy.evaluation_model()(**inputs).logits, ctx.global_model.eval()(**inputs).logits
    )
    # a device holding version 0 replays the stacked merge instead of downloading the model
    nxt = strategy.configure_round(2, [0, 1])
    assert nxt[0].base_key == (1, 0.0)
    derivation = strategy.derivation((0, 0.0), (1, 0.0))
    assert derivation is not None and len(derivation.merges) == 1
    assert next(iter(derivation.merges[0].values()))[0].shape[0] == 6
    replayed = copy.deepcopy(before)
    for merge in derivation.merges:
        merge_lora_delta(replayed, merge)
    for module, weight in _weights(replayed).items():
        torch.testing.assert_close(weight, merged[module], rtol=0, atol=1e-6)
    shared = LoRAStrategy.arm_work(strategy, 0, 0.0, 2)  # the time model counts the replay as download
    assert strategy.arm_work(0, 0.0, 2).bytes_down == shared.bytes_down + tensor_bytes(derivation.merges)
    # once every device holds version 1, version 1's stack is dropped and version 2's kept
    ctx.held_base = lambda cid: (1, 0.0)
    factors = {cid: _trained(a, cid + 7) for cid, a in nxt.items()}
    strategy.aggregate_round(2, [_outcome(cid, nxt[cid], ctx, f) for cid, f in factors.items()])
    assert sorted(strategy.merge_log) == [2]


def test_flora_server_lr_scales_the_merged_stack_and_the_replayed_merge(tiny_llama_dir):
    """``method.flora.server_lr: 0.5``: the base moves by half the stacked product, and a device replaying
    the merge log reaches exactly the server's base (the log holds the scaled step)."""
    ctx, _ = make_context(
        tiny_llama_dir, method={"name": "flora", "flora": {"server_lr": 0.5}}, bandit={"ranks": [2, 4]}
    )
    ctx.held_base = lambda cid: (0, 0.0)
    strategy = build_strategy("flora")
    strategy.setup(ctx)
    before = copy.deepcopy(ctx.global_model)
    assignments = strategy.configure_round(1, [0, 1])
    factors = {cid: _trained(a, cid) for cid, a in assignments.items()}
    strategy.aggregate_round(1, [_outcome(cid, assignments[cid], ctx, f) for cid, f in factors.items()])
    merged = _weights(ctx.global_model)
    for module in factors[0]:
        full = sum(w * factors[cid][module][1] @ factors[cid][module][0] for w, cid in ((0.25, 0), (0.75, 1)))
        torch.testing.assert_close(
            merged[module], _weights(before)[module] + 0.5 * full, rtol=1e-5, atol=1e-6
        )
    strategy.configure_round(2, [0, 1])
    derivation = strategy.derivation((0, 0.0), (1, 0.0))
    assert derivation is not None
    replayed = copy.deepcopy(before)
    for merge in derivation.merges:
        merge_lora_delta(replayed, merge)
    for module, weight in _weights(replayed).items():
        torch.testing.assert_close(weight, merged[module], rtol=0, atol=1e-6)


def test_legend_gives_weak_devices_the_top_blocks_with_ranks_rising_to_the_output(tiny_llama_dir):
    ctx, _ = make_context(tiny_llama_dir, method={"name": "legend"}, bandit={"ranks": [2, 4]})
    strategy = build_strategy("legend")
    strategy.setup(ctx)
    assert strategy.block_rank == [2, 4] and strategy.client_depth == {0: 1, 1: 2}  # capacity 1.0 vs 5.0
    assignments = strategy.configure_round(1, [0, 1])
    weak, strong = assignments[0], assignments[1]
    assert weak.lora_modules and all(".layers.1." in n for n in weak.lora_modules)
    assert set(strong.lora_modules) == set(lora_target_shapes(ctx.global_model, ctx.lora_targets))
    for name, (a, b) in strong.factors.items():
        assert a.shape[0] == b.shape[1] == (2 if ".layers.0." in name else 4)
    assert set(weak.factors) == set(weak.lora_modules) and weak.rank == strong.rank == 4
    # the backward pass of the weak device stops above block 0: half the blocks' weights
    reach, blocks = backward_reach(ctx.global_model, weak.lora_modules)
    assert (reach, blocks) == (pytest.approx(0.5), 1)
    assert backward_reach(ctx.global_model, ctx.lora_targets) == (1.0, 2)
    cfg = ctx.config
    full = task_cost(cfg, None, 0, 2**30, ctx.global_model, 4, 1, ctx.lora_targets, ctx.head_modules)
    top = task_cost(cfg, None, 0, 2**30, ctx.global_model, 4, 1, weak.lora_modules, ctx.head_modules)
    assert top.flops_per_token == pytest.approx(full.flops_per_token * 0.75)
    assert top.trainable_params < full.trainable_params
    assert strategy.arm_work(0, 0.0, 4).compute == pytest.approx(strategy.arm_work(1, 0.0, 4).compute * 0.75)
    assert strategy.arm_work(0, 0.0, 4).bytes_up < strategy.arm_work(1, 0.0, 4).bytes_up
    # aggregation per module over the clients that trained it: block 0 is client 1's alone
    previous = {k: (a.clone(), b.clone()) for k, (a, b) in strategy.factors.items()}
    factors = {cid: _trained(a, cid) for cid, a in assignments.items()}
    metrics = strategy.aggregate_round(
        1, [_outcome(cid, assignments[cid], ctx, f) for cid, f in factors.items()]
    )
    assert metrics["mean_lora_depth"] == 1.5
    for name, (a, b) in strategy.factors.items():
        rank = 2 if ".layers.0." in name else 4
        assert not torch.any(a[rank:]) and not torch.any(b[:, rank:])  # zero-padded to the global rank
        if ".layers.0." in name:
            torch.testing.assert_close(a[:rank], factors[1][name][0])
            torch.testing.assert_close(b[:, :rank], factors[1][name][1])
        else:
            torch.testing.assert_close(a, 0.25 * factors[0][name][0] + 0.75 * factors[1][name][0])
            torch.testing.assert_close(b, 0.25 * factors[0][name][1] + 0.75 * factors[1][name][1])
        assert name in previous


def test_fedlps_plays_ratios_only_and_rewards_utility_gain_per_second(tiny_llama_dir):
    ctx, _ = make_context(
        tiny_llama_dir,
        method={"name": "fedlps"},
        pruning={"target_sparsity": 0.3, "importance": "magnitude"},
        bandit={"pruning_ratios": [0.0, 0.5], "ranks": [2, 4]},
        lora={"rank": 4},
    )
    strategy = build_strategy("fedlps")
    strategy.setup(ctx)
    assert strategy.prune_global and strategy.aggregator.name == "flexlora"  # as FedSpine
    assignments = strategy.configure_round(1, [0, 1])
    for assignment in assignments.values():
        assert assignment.rank == 4 and 0.0 <= assignment.pruning_ratio <= 0.5 and assignment.arm is not None
    outcomes = [
        _outcome(cid, a, ctx, _trained(a, cid), loss_mean=0.4 + 0.2 * cid, sim_time_s=2.0 + cid)
        for cid, a in assignments.items()
    ]
    metrics = strategy.aggregate_round(1, outcomes)
    for cid, outcome in enumerate(outcomes):
        expected = (utility(math.exp(-(0.4 + 0.2 * cid))) - utility(0.0)) / (2.0 + cid)
        assert outcome.metrics.reward == pytest.approx(expected)
        learner = strategy.bandits.learners[cid]
        assert learner.rewards[learner.ids.index(outcome.assignment.arm)][-1] == pytest.approx(expected)
    assert metrics["mean_reward"] == pytest.approx(np.mean([o.metrics.reward for o in outcomes]))
    assert metrics["pruned_this_round"] == 1.0  # FedSpine's schedule (rounds: 1, so the target at once)


# ------------------------------------------------------------------ end to end through Ray
def test_flora_through_ray_merges_every_round_and_devices_derive(
    ray_session, tiny_llama_dir, tiny_text_csv, profiles_path, tmp_path
):
    rounds, clients = run_method(tmp_path, tiny_llama_dir, tiny_text_csv, profiles_path, "flora")
    assert rounds["round"].tolist() == [0, 1, 2, 3] and (clients["status"] == "ok").all()
    assert rounds["test_loss"].notna().all() and (rounds["sparsity"] == 0).all()
    ranks = clients.groupby("device_class")["lora_rank"].max()
    assert ranks["slow_box"] == 2 and ranks["fast_box"] == 4
    assert (rounds["stacked_rank"].iloc[1:] == 2 * 2 + 2 * 4).all()  # 4 clients stacked every round
    # after the first download every device replays the previous round's stack instead of the model
    assert (clients.loc[clients["round"] == 1, "base_transfer"] == "full").all()
    later = clients[clients["round"] > 1]
    assert (later["base_transfer"] == "derived").all()
    first_down = clients.loc[clients["round"] == 1, "bytes_down"].mean()
    assert later["bytes_down"].max() < first_down / 2


def test_hetlora_published_options_through_ray(
    ray_session, tiny_llama_dir, tiny_text_csv, profiles_path, tmp_path
):
    rounds, clients = run_method(
        tmp_path,
        tiny_llama_dir,
        tiny_text_csv,
        profiles_path,
        "hetlora",
        **{
            "method.hetlora.weighting": "norm",
            "method.hetlora.self_prune": True,
            "method.hetlora.prune_threshold": 10.0,  # every tail counts as weak: each round prunes a slice
            "method.hetlora.min_rank": 2,
        },
    )
    assert (clients["status"] == "ok").all() and rounds["test_loss"].notna().all()
    by_client = clients.sort_values("round").groupby("client_id")["lora_rank"].apply(list)
    fast = [r for r in by_client if r[0] == 4]
    assert fast and all(r == [4, 3, 2] for r in fast)  # 4 -> floor(3.96) = 3 -> floor(2.97) = 2 (min_rank)
    assert all(set(r) == {2} for r in by_client if r[0] == 2)  # already at min_rank
    assert (rounds["rank_prunes"].iloc[1:] == [len(fast), len(fast), 0]).all()


def test_fedlps_through_ray_reaches_equal_sparsity_at_one_rank(
    ray_session, tiny_llama_dir, tiny_text_csv, profiles_path, tmp_path
):
    rounds, clients = run_method(
        tmp_path, tiny_llama_dir, tiny_text_csv, profiles_path, "fedlps", **{"lora.rank": 4}
    )
    assert (clients["status"] == "ok").all() and rounds["test_loss"].notna().all()
    assert rounds["sparsity"].iloc[-1] == pytest.approx(0.4, abs=0.05)  # FedSpine's schedule and target
    assert (clients["lora_rank"] == 4).all() and clients["pruning_ratio"].between(0.0, 0.5).all()
    assert clients["arm"].notna().all() and clients["reward"].notna().all()


def test_legend_through_ray_trains_the_top_blocks_of_weak_devices(
    ray_session, tiny_llama_dir, tiny_text_csv, profiles_path, tmp_path
):
    rounds, clients = run_method(tmp_path, tiny_llama_dir, tiny_text_csv, profiles_path, "legend")
    assert (clients["status"] == "ok").all() and rounds["test_loss"].notna().all()
    assert (rounds["sparsity"] == 0).all() and rounds["mean_lora_depth"].iloc[1:].eq(1.5).all()
    by_class = clients.groupby("device_class")
    assert by_class["trainable_params"].max()["slow_box"] < by_class["trainable_params"].min()["fast_box"]
    flops = by_class["flops_per_token"].mean()  # backprop stops above block 0 on the slow devices
    assert flops["slow_box"] == pytest.approx(0.75 * flops["fast_box"], rel=0.05)
    assert by_class["bytes_up"].max()["slow_box"] < by_class["bytes_up"].min()["fast_box"]


def test_flora_resumes_after_a_crash_with_the_uninterrupted_metrics(
    ray_session, tiny_llama_dir, tiny_text_csv, profiles_path, tmp_path
):
    """FLoRA's state is its merged base and merge log: devices must still derive after a resume."""
    from fedspine_ray.launch.checkpoint_files import checkpoint_round
    from fedspine_ray.launch.results import read_run
    from fedspine_ray.runner import run_experiment

    from .test_e2e_ray import tiny_config
    from .test_resume import assert_same_metrics

    def config(out):
        return tiny_config(
            tiny_llama_dir,
            tiny_text_csv,
            out,
            training={"rounds": 3, "local_steps": 2},
            method={"name": "flora"},
            bandit={"ranks": [2, 4]},
            devices={"mix": {"slow_box": 0.5, "fast_box": 0.5}, "profiles_path": str(profiles_path)},
            runtime={"checkpoint_every": 2},
        )

    run_experiment(config(tmp_path / "ref"), progress=False)

    def crash_in_round_3(row):
        if row["round"] == 3:  # its rows are on disk, its checkpoint is not
            raise KeyboardInterrupt

    crashed = config(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(crashed, progress=False, on_round=crash_in_round_3)
    assert checkpoint_round(tmp_path / "run") == 2
    run_experiment(crashed, progress=False, resume=True)
    _, clients = read_run(tmp_path / "run")
    assert (clients.loc[clients["round"] == 3, "base_transfer"] == "derived").all()  # replayed after resume
    assert_same_metrics(tmp_path / "run", tmp_path / "ref")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"method.hetlora.prune_gamma": 1.0}, "method.hetlora.prune_gamma"),
        ({"method.hetlora.weighting": "energy"}, "method.hetlora.weighting"),
        ({"method.hetlora.min_rank": 0}, "method.hetlora.min_rank"),
        ({"method.fedlps.initial_arms": 0}, "method.fedlps.initial_arms"),
        ({"method.fedlps.horizon": -1.0}, "method.fedlps.horizon"),
        ({"method.legend.min_depth": 0}, "method.legend.min_depth"),
        ({"method.legend.min_depth": 3, "method.legend.max_depth": 2}, "method.legend.max_depth"),
        ({"method.name": "fedit", "method.aggregation": "flora"}, "method.aggregation"),
        ({"method.flora.server_lr": 0.0}, "method.flora.server_lr"),
    ],
)
def test_bad_options_name_the_field(overrides, field):
    from fedspine_ray.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError) as error:
        config_from_dict({}).with_overrides(overrides)
    assert str(error.value).startswith(field) and "\n" not in str(error.value)
