"""FedIT: federated instruction tuning with plain LoRA FedAvg (Zhang et al. 2024), the no-pruning baseline.

Every client trains the same rank on the full model; A and B are averaged separately, weighted by samples.
"""

from __future__ import annotations

from fedspine_ray.strategies.lora import LoRAStrategy


class FedIT(LoRAStrategy):
    name = "fedit"
    default_aggregation = "fedavg"
