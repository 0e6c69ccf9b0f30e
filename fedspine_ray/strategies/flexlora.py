"""FlexLoRA (Bai et al., 2024): heterogeneous ranks, aggregation of full deltas re-factorised by SVD.

Clients train the full model at a rank chosen by device capability (as HetLoRA); the server averages the
full low-rank products ``B_k A_k`` and truncates the average back to factors by SVD (``flexlora``
aggregator), which also hands each client its best rank-``r_k`` approximation.
"""

from __future__ import annotations

from fedspine_ray.strategies.capacity import CapacityRanked


class FlexLoRA(CapacityRanked):
    name = "flexlora"
    default_aggregation = "flexlora"
