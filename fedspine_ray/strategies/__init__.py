"""Federated methods, registered by the name used in ``method.name``."""

from fedspine_ray.strategies.base import ClientAssignment, ClientOutcome, ServerContext, Strategy
from fedspine_ray.strategies.baselines import BASELINES
from fedspine_ray.strategies.fedit import FedIT
from fedspine_ray.strategies.fedspine import FedSpine
from fedspine_ray.strategies.heterogeneous import FlexLoRA, HetLoRA

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedIT, HetLoRA, FlexLoRA, FedSpine, *BASELINES)
}


def build_strategy(name: str) -> Strategy:
    return STRATEGIES[name]()


__all__ = ["STRATEGIES", "ClientAssignment", "ClientOutcome", "ServerContext", "Strategy", "build_strategy"]
