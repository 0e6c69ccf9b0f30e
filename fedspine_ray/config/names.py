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
    "flora",
    "fedlps",
    "legend",
)
AGGREGATOR_NAMES: tuple[str, ...] = (
    "fedspine",
    "hetlora",
    "hetlora_sw",
    "flexlora",
    "flexlora_coverage",
    "fedavg",
    "flora",
)
IMPORTANCE_NAMES: tuple[str, ...] = ("magnitude", "taylor")

#: Terms of FedSpine's multi-term bandit reward, each in [0, 1] (docs/bandit.md, "Multi-term reward").
REWARD_TERMS: tuple[str, ...] = ("loss", "pruning", "update", "time")
#: Default weights: timeliness dominates because it is the only term measured to steer the bandit well
#: (issue 9); the three learning-side terms share the rest so that no single noisy one decides.
DEFAULT_REWARD_WEIGHTS: dict[str, float] = {"loss": 0.15, "pruning": 0.1, "update": 0.15, "time": 0.6}

#: Fields that moved, dotted old name -> new name: a config using the old name fails with one line naming the
#: new one (round policies left ``bandit`` / ``devices`` for their own section, since they apply to every method).
MOVED_FIELDS: dict[str, str] = {
    "bandit.predict_time": "rounds.time_model",
    "bandit.time_slack": "rounds.time_slack",
    "bandit.time_gamma": "rounds.time_gamma",
    "bandit.fill_budget": "rounds.fill",
    "bandit.fill_max_factor": "rounds.fill_max_factor",
    "devices.round_policy": "rounds.end",
    "devices.deadline_s": "rounds.deadline_s",
    "devices.count_stragglers": "rounds.count_stragglers",
}
