"""HetLoRA (Cho et al., EMNLP 2024): heterogeneous ranks by device capability, zero-padded aggregation.

Every client trains the full (unpruned) model at a fixed rank chosen by its device's capability; the
server keeps the global adapter at the largest rank, hands each client its leading ``r_k`` rank slices and
averages the zero-padded factors (``hetlora`` aggregator; ``hetlora_sw`` weights by update norm).
"""

from __future__ import annotations

from fedspine_ray.strategies.capacity import CapacityRanked


class HetLoRA(CapacityRanked):
    name = "hetlora"
    default_aggregation = "hetlora"
