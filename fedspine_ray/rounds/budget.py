"""A simulated-time budget derived from the population: what dense FedIT would need for N rounds.

Comparing methods at equal *time* (``training.max_sim_time_s``) is how the paper's speed claim is meant, but
a budget in seconds is specific to one population and task: 120 s is dense FedIT's 10 rounds on the shipped
16 devices with tweets, and a task with longer texts or slower devices needs more. The simulated clock is
analytic (fedspine_ray/devices/cost.py), so the server can predict that time before training: every selected device
trains the unpruned model with rank-``lora.rank`` adapters for ``training.local_steps`` steps, downloads the
model in its first round and the adapters and head every round, and uploads adapters and head; a device the
model does not fit runs out of memory and does not count, as in a FedIT run. ``training.sim_time_budget_fedit_rounds``
turns that prediction into the run's ``max_sim_time_s`` (fedspine_ray/runtime/server.py, at set-up).

Tokens per step are what the clients will count: a batch is trimmed to its longest example, so the expected
tokens of a step are ``batch_size x E[longest length in a random batch of the device's shard]`` (estimated
from draws with a fixed seed). The prediction uses each device's seeded per-round conditions, the same ones
the FedIT run will see, so it differs from a FedIT run's clock only by this expectation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from torch import nn

from fedspine_ray.config import ExperimentConfig
from fedspine_ray.data.tokens import TokenizedSplit
from fedspine_ray.devices.cost import estimate_training_flops, round_end_time, simulated_round_time
from fedspine_ray.devices.population import ClientDevice
from fedspine_ray.devices.workload import lora_trainable_params
from fedspine_ray.messages import model_bytes
from fedspine_ray.rounds.clock import RoundClock

__all__ = ["expected_tokens_per_step", "predicted_fedit_time"]

#: Parameters travel as float32 (the adapters and head the server sends; docs/devices.md).
_BYTES_PER_PARAM = 4


def expected_tokens_per_step(shard: TokenizedSplit, batch_size: int, seed: int, draws: int = 64) -> float:
    """Mean tokens of a training batch of ``shard``: ``batch_size x`` its longest example, over ``draws``."""
    lengths = shard.attention_mask.sum(dim=1).numpy()
    if len(lengths) == 0:
        return 0.0
    rng = np.random.default_rng(seed)
    replace = len(lengths) < batch_size
    longest = [
        lengths[rng.choice(len(lengths), size=batch_size, replace=replace)].max() for _ in range(draws)
    ]
    return float(batch_size * max(1.0, float(np.mean(longest))))


def predicted_fedit_time(
    config: ExperimentConfig,
    rounds: int,
    model: nn.Module,
    devices: Sequence[ClientDevice],
    clock: RoundClock,
    shards: Mapping[int, TokenizedSplit],
    lora_targets: Sequence[str],
    head_modules: Sequence[str],
    select: Callable[[int], Sequence[int]],
) -> float:
    """Simulated seconds dense FedIT would spend on ``rounds`` rounds of this population (module docstring).

    ``select(rnd)`` gives the round's selected client ids (the server's seeded sampling).
    """
    training, rank = config.training, config.lora.rank
    # adapters and head, down and up every round
    exchanged = lora_trainable_params(model, lora_targets, rank, head_modules) * _BYTES_PER_PARAM
    whole = model_bytes(model)
    tokens = {
        d.client_id: expected_tokens_per_step(
            shards[d.client_id], training.batch_size, config.seed + d.client_id
        )
        * training.local_steps
        for d in devices
    }
    holds: set[int] = set()
    total = 0.0
    for rnd in range(1, rounds + 1):
        times: dict[int, float] = {}
        for cid in select(rnd):
            cost = clock.estimate(cid, model, rank, rnd, lora_targets, head_modules)
            assert cost.conditions is not None, "config validation requires devices.mix for this budget"
            if not cost.fits:
                continue  # out of memory in FedIT too: no time, no update
            down = exchanged + (0 if cid in holds else whole)
            holds.add(cid)
            flops = estimate_training_flops(cost.flops_per_token, int(round(tokens[cid])))
            times[cid] = simulated_round_time(flops, down, exchanged, cost.conditions).total_s
        policy = config.rounds
        total += round_end_time(
            times, policy.end, policy.deadline_s, drop_stragglers=not policy.count_stragglers
        ).end_time
    return total
