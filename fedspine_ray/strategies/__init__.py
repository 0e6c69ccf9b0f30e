"""Federated methods: what each decides per round, registered by the name ``method.name`` uses.

Role: one strategy per file over the :class:`~.base.Strategy` interface (configure a round, aggregate it,
the model to evaluate, the base a key names); :mod:`.lora` is the machinery every LoRA method shares
(global adapters in global coordinates, sub-models, global pruning), :mod:`.aggregate` the aggregation rules.
May import: config, messages, modeling, pruning, bandits, rounds, devices. Never Ray or the runtime:
strategies see tensors and outcomes, so they run (and are tested) in one process.
"""

from fedspine_ray.strategies.ablations import ABLATIONS
from fedspine_ray.strategies.base import ServerContext, Strategy
from fedspine_ray.strategies.baselines import BASELINES
from fedspine_ray.strategies.fedit import FedIT
from fedspine_ray.strategies.fedlps import FedLPS
from fedspine_ray.strategies.fedspine import FedSpine
from fedspine_ray.strategies.flexlora import FlexLoRA
from fedspine_ray.strategies.flora import FLoRA
from fedspine_ray.strategies.hetlora import HetLoRA
from fedspine_ray.strategies.legend import Legend

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (FedIT, HetLoRA, FlexLoRA, FedSpine, *BASELINES, *ABLATIONS, FLoRA, FedLPS, Legend)
}


def build_strategy(name: str) -> Strategy:
    return STRATEGIES[name]()


__all__ = ["STRATEGIES", "ServerContext", "Strategy", "build_strategy"]
