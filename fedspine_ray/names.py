"""The names ``method.name``, ``method.aggregation`` and ``pruning.importance`` accept, without torch.

Configs are validated in the launching process, which never imports torch (it only steps rounds and
writes rows; the models live in the actors). The registries that implement these names
(``fedspine_ray.strategies.STRATEGIES``, ``fedspine_ray.aggregation.AGGREGATORS``,
``fedspine_ray.pruning.IMPORTANCE_METHODS``) do; ``tests/test_config.py`` holds each tuple equal to its
registry's keys, so adding an entry there without naming it here fails a test, not a user's run.
"""

from __future__ import annotations

METHOD_NAMES: tuple[str, ...] = (
    "fedit",
    "hetlora",
    "flexlora",
    "fedspine",
    "fixed_ratio",
    "random_arms",
    "prune_then_tune",
    "fedspine_no_bandit",
    "fedspine_no_prune",
    "fedspine_no_rank",
)
AGGREGATOR_NAMES: tuple[str, ...] = (
    "fedspine",
    "hetlora",
    "hetlora_sw",
    "flexlora",
    "flexlora_coverage",
    "fedavg",
)
IMPORTANCE_NAMES: tuple[str, ...] = ("magnitude", "taylor")
