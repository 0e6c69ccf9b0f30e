"""The server's global model under DeepSpeed ZeRO (``server.backend: deepspeed``) gives what plain torch
gives: same evaluation outputs, same Taylor importance ranking, same merged + pruned global model
(issue 10, part 1). Real DeepSpeed on its CPU accelerator, tiny random LLaMA."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("deepspeed")

from fedspine_ray.config import config_from_dict  # noqa: E402
from fedspine_ray.modeling.backend import DeepSpeedBackend, TorchBackend, build_backend  # noqa: E402
from fedspine_ray.modeling.loading import load_classifier  # noqa: E402
from fedspine_ray.pruning import prunable_units  # noqa: E402
from fedspine_ray.strategies import ServerContext, build_strategy  # noqa: E402

from .test_strategies import make_context  # noqa: E402

#: (zero_stage, offload): every combination the config accepts.
SETTINGS = [(3, "none"), (3, "cpu"), (2, "none")]


def batches(seed: int = 0, count: int = 2) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(5, 500, (8, 12), generator=generator),
            "attention_mask": torch.ones(8, 12, dtype=torch.long),
            "labels": torch.randint(0, 2, (8,), generator=generator),
        }
        for _ in range(count)
    ]


def deepspeed_backend(stage: int, offload: str) -> DeepSpeedBackend:
    config = config_from_dict({"server": {"backend": "deepspeed", "zero_stage": stage, "offload": offload}})
    backend = build_backend(config.server)
    assert isinstance(backend, DeepSpeedBackend)
    return backend


def evaluate(backend, model, data) -> tuple[float, int, torch.Tensor]:
    """The server's evaluation loop (FederatedServer._evaluate_model) on ``data``."""
    loss, correct, logits = 0.0, 0, []
    with backend.serving(model) as forward, torch.no_grad():
        for batch in data:
            output = forward(**batch)
            loss += float(output.loss) * len(batch["labels"])
            correct += int((output.logits.argmax(-1) == batch["labels"]).sum())
            logits.append(output.logits)
    return loss, correct, torch.cat(logits)


@pytest.mark.parametrize(("stage", "offload"), SETTINGS, ids=[f"zero{s}-offload_{o}" for s, o in SETTINGS])
def test_deepspeed_matches_torch_evaluation_and_importance(tiny_llama_dir, stage, offload):
    model = load_classifier(tiny_llama_dir, num_labels=2, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    backend = deepspeed_backend(stage, offload)
    data = batches()

    ref_loss, ref_correct, ref_logits = evaluate(TorchBackend(), copy.deepcopy(model), data)
    ds_loss, ds_correct, ds_logits = evaluate(backend, copy.deepcopy(model), data)
    assert ds_correct == ref_correct
    assert ds_loss == pytest.approx(ref_loss, rel=1e-5)
    torch.testing.assert_close(ds_logits, ref_logits, rtol=1e-5, atol=1e-6)

    ref = TorchBackend().importance(model, "taylor", data)
    got = backend.importance(model, "taylor", data)
    for kind in ("attention", "mlp"):
        for layer, scores in getattr(ref, kind).items():
            torch.testing.assert_close(getattr(got, kind)[layer], scores, rtol=1e-4, atol=1e-8)
            assert torch.equal(getattr(got, kind)[layer].argsort(), scores.argsort()), (kind, layer)
    # the caller's model is untouched: not partitioned, same weights, no gradients left behind
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None for p in model.parameters())


def fedspine_context(model_dir, backend) -> ServerContext:
    """FedSpine pruning to 0.5 in one step, calibrated on this module's batches, on ``backend``."""
    ctx, _ = make_context(
        model_dir,
        backend=backend,
        calibration_batches=batches(seed=1),
        method={"name": "fedspine"},
        pruning={"target_sparsity": 0.5, "importance": "taylor", "end_fraction": 1.0},
        bandit={"pruning_ratios": [0.0, 0.5], "ranks": [4]},
    )
    return ctx


def test_same_seed_same_pruned_global_model_and_metrics(tiny_llama_dir):
    """FedSpine's server step - aggregated adapter merged, Taylor-scored, pruned, evaluated - through the
    strategy hooks, once per backend."""
    results = {}
    for name, backend in (("torch", TorchBackend()), ("deepspeed", deepspeed_backend(3, "none"))):
        ctx = fedspine_context(tiny_llama_dir, backend)
        strategy = build_strategy("fedspine")
        strategy.setup(ctx)
        generator = torch.Generator().manual_seed(3)
        strategy.factors = {  # an aggregated, non-zero global adapter, as after a round
            k: (a, torch.randn(b.shape, generator=generator) * 0.05) for k, (a, b) in strategy.factors.items()
        }
        sub_importance = strategy.importance()  # the sub-model scoring path (evaluation model copy)
        assert strategy.global_prune_step(1)
        loss, correct, _ = evaluate(backend, strategy.evaluation_model(), batches(seed=2))
        results[name] = (ctx.global_model.state_dict(), sub_importance, loss, correct)

    (ref_state, ref_imp, ref_loss, ref_correct), (state, imp, loss, correct) = (
        results["torch"],
        results["deepspeed"],
    )
    assert prunable_units(fedspine_context(tiny_llama_dir, TorchBackend()).global_model).sparsity == 0.0
    assert state.keys() == ref_state.keys()
    for key, value in ref_state.items():
        assert state[key].shape == value.shape, key  # the same units were pruned
        torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6)
    for layer, scores in ref_imp.mlp.items():
        assert torch.equal(imp.mlp[layer].argsort(), scores.argsort())
    assert correct == ref_correct
    assert loss == pytest.approx(ref_loss, rel=1e-5)


@pytest.mark.slow
def test_ray_run_with_deepspeed_server_matches_torch(
    ray_session, tiny_llama_dir, tiny_text_csv, profiles_path, tmp_path
):
    """A real federated FedSpine run through Ray actors: the server actor runs ZeRO-3 (as the one rank, and
    with two rank actors), same per-round metrics as the plain-torch server with the same seed.

    The clients get device profiles so round times come from the cost model: without them a round's
    simulated time is its measured wall time, the bandit's reward follows it, and two runs may pick
    different arms whatever the backend (the flake CI hit)."""
    from fedspine_ray.launch.results import read_run
    from fedspine_ray.runner import run_experiment

    from .test_e2e_ray import tiny_config

    rounds = {}
    for backend, ranks in (("torch", 1), ("deepspeed", 1), ("deepspeed", 2)):
        name = f"{backend}{ranks}"
        config = tiny_config(
            tiny_llama_dir,
            tiny_text_csv,
            tmp_path / name,
            clients={"num_clients": 2},
            training={"rounds": 2, "local_steps": 3},
            method={"name": "fedspine"},
            pruning={"target_sparsity": 0.5, "importance": "taylor", "end_fraction": 1.0},
            bandit={"pruning_ratios": [0.0, 0.5], "ranks": [4]},
            devices={"mix": {"slow_box": 0.5, "fast_box": 0.5}, "profiles_path": str(profiles_path)},
            server={"backend": backend, "zero_stage": 3, "num_ranks": ranks},
        )
        run_experiment(config, progress=False)
        rounds[name] = read_run(tmp_path / name)[0]
    torch_rounds = rounds["torch1"]
    for name in ("deepspeed1", "deepspeed2"):  # one rank (the server), two rank actors (ZeRO partitions)
        ds_rounds = rounds[name]
        assert ds_rounds["sparsity"].iloc[-1] > 0  # the global model was pruned (Taylor scored under ZeRO-3)
        for column in ("sparsity", "total_params", "test_accuracy"):
            assert ds_rounds[column].tolist() == torch_rounds[column].tolist(), (name, column)
        for column in ("test_loss", "train_loss"):
            torch.testing.assert_close(
                torch.tensor(ds_rounds[column].to_numpy()),
                torch.tensor(torch_rounds[column].to_numpy()),
                rtol=1e-4,
                atol=1e-6,
                equal_nan=True,
            )


def test_two_zero_ranks_partition_the_model_and_give_torch_results(ray_session, tiny_llama_dir):
    """``server.num_ranks: 2``: two Ray actors form one gloo group, ZeRO-3 keeps half of every parameter on
    each, and evaluation (rows split over the ranks) and Taylor importance (batches split, gradients reduced)
    equal the plain torch server's."""
    from fedspine_ray.runtime.zero import ZeroGroupBackend, server_backend

    config = config_from_dict({"server": {"backend": "deepspeed", "zero_stage": 3, "num_ranks": 2}}).server
    group = server_backend(config, "test-zero")
    assert isinstance(group, ZeroGroupBackend)
    try:
        assert [m["accelerator"] for m in group.members] == ["cpu", "cpu"]
        model = load_classifier(tiny_llama_dir, num_labels=2, seed=0)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        parts = group.partitions(copy.deepcopy(model))
        total = sum(p.numel() for p in model.parameters())
        assert len(parts) == 2 and all(full == total for _, full in parts)
        assert all(held <= total / 2 + 1000 for held, _ in parts)  # each rank holds about half (padding)
        assert sum(held for held, _ in parts) >= total

        data = batches(count=3) + [batches(seed=5, count=1)[0]]  # 4 batches: 2 per rank
        data[-1] = {k: v[:5] for k, v in data[-1].items()}  # an odd batch: 3 rows on rank 0, 2 on rank 1
        ref_loss, ref_correct, ref_logits = evaluate(TorchBackend(), copy.deepcopy(model), data)
        loss, correct, logits = evaluate(group, copy.deepcopy(model), data)
        assert correct == ref_correct
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-6)

        calibration = batches(seed=1, count=3)  # odd: rank 1 pads with a zero-weighted batch
        ref = TorchBackend().importance(model, "taylor", calibration)
        got = group.importance(model, "taylor", calibration)
        for kind in ("attention", "mlp"):
            for layer, scores in getattr(ref, kind).items():
                torch.testing.assert_close(getattr(got, kind)[layer], scores, rtol=1e-4, atol=1e-8)
        for name, value in model.state_dict().items():
            assert torch.equal(value, before[name]), name  # the server's model is untouched
    finally:
        group.close()
