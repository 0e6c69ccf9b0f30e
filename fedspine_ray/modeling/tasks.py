"""Task kinds: what a federated run learns and how the server measures it.

``classification`` is the encoder path (fresh classifier head, cross-entropy over classes). ``causal_lm``
fine-tunes a pretrained decoder *as a language model*, the way LLMs are deployed:

* classification by prompting: every example is rendered through ``task.prompt_template`` (inside the
  tokenizer's chat template when it has one), followed by the label's answer word. The loss covers only
  the answer tokens (every other label is -100), so the model is taught to answer, not to reproduce
  reviews. Accuracy compares the log-likelihood of each label word after the prompt: no free generation
  is needed and an untrained instruct model already gets a meaningful zero-shot score;
* instruction tuning (``task.instruction``): instruction/response pairs with the same answer-only loss,
  evaluated by held-out loss (perplexity = exp(loss)) and answer-token accuracy.

Clients only ever see :class:`~fedspine_ray.data.tokens.TokenizedSplit` tensors and call
``model(**batch).loss``; a causal LM computes the shifted, masked loss itself from token-level labels.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedspine_ray.config import ConfigError, ExperimentConfig, TaskConfig
from fedspine_ray.data import load_data, tokenize
from fedspine_ray.data.instructions import instructions_from_labelled
from fedspine_ray.data.sources import load_instruction_data
from fedspine_ray.data.tokens import TokenizedSplit
from fedspine_ray.modeling.backend import Forward
from fedspine_ray.modeling.loading import load_causal_lm, load_classifier, resolve_model_path
from fedspine_ray.modeling.model_info import model_config_dict

IGNORE_INDEX = -100
#: Marks where the example goes while the chat template is rendered (split around it afterwards).
_SENTINEL = "\u2063FEDSPINE_TEXT\u2063"


@dataclass
class PreparedData:
    """Tokenised splits plus what partitioning and the console need."""

    train: TokenizedSplit
    test: TokenizedSplit
    partition_labels: np.ndarray  # per training example: what Dirichlet partitioning splits on
    label_names: list[str]


class Task:
    """Interface of a task kind (see :func:`build_task`)."""

    #: Class names (set by :meth:`prepare`; empty for instruction tuning): per-class accuracy columns.
    label_names: list[str]

    def prepare(self, config: ExperimentConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
        raise NotImplementedError

    def load_model(self, model_dir: Path, num_labels: int, seed: int) -> nn.Module:
        raise NotImplementedError

    def evaluate_metrics(self, model: Forward, test: TokenizedSplit, batch_size: int) -> dict[str, float]:
        """Every evaluation column of ``model`` (a module or the server backend's forward) on ``test``:
        ``test_loss``, ``test_accuracy``, ``eval_samples`` and, with classes, ``test_accuracy_class_<label>``
        and ``test_loss_class_<label>`` (:func:`class_accuracy_columns`, :func:`class_loss_columns`)."""
        raise NotImplementedError

    def evaluate(self, model: Forward, test: TokenizedSplit, batch_size: int) -> tuple[float, float]:
        """(mean test loss, accuracy) of ``model``: :meth:`evaluate_metrics` without the extra columns."""
        metrics = self.evaluate_metrics(model, test, batch_size)
        return metrics["test_loss"], metrics["test_accuracy"]


def class_column(name: str, index: int, metric: str = "accuracy") -> str:
    """``test_<metric>_class_<label>``: the label lower-cased, non-word characters as ``_`` (else its index)."""
    slug = re.sub(r"\W+", "_", str(name).lower()).strip("_")
    return f"test_{metric}_class_{slug or index}"


def _per_class_means(
    values: torch.Tensor, gold: torch.Tensor, label_names: Sequence[str], metric: str
) -> dict[str, float]:
    """Mean of ``values`` over the examples of each gold class, one ``test_<metric>_class_<label>`` column each
    (NaN for a class absent from the evaluated set; two labels with the same slug keep their index apart)."""
    columns: dict[str, float] = {}
    for index, name in enumerate(label_names):
        column = class_column(name, index, metric)
        if column in columns:
            column = f"{column}_{index}"
        members = gold == index
        columns[column] = float(values[members].float().mean()) if bool(members.any()) else math.nan
    return columns


def class_accuracy_columns(
    predicted: torch.Tensor, gold: torch.Tensor, label_names: Sequence[str]
) -> dict[str, float]:
    """Accuracy within each gold class (its recall): what the data of the devices that hold a class bought.

    Why: with a partition in which some devices alone hold some classes (``partition.kind:
    device_correlated``, label-skewed Dirichlet), overall accuracy hides whether a method learned the
    classes only the devices it left out had. NaN for a class absent from the evaluated set.
    """
    return _per_class_means(predicted == gold, gold, label_names, "accuracy")


def class_loss_columns(
    example_loss: torch.Tensor, gold: torch.Tensor, label_names: Sequence[str]
) -> dict[str, float]:
    """Mean answer loss within each gold class: ``test_loss_class_<label>``.

    Why: a class held only by a few devices can gain likelihood long before it wins an argmax. On a rare class
    (the tweets' positives, 12 % of the test split) accuracy stays at zero for every method in a short run,
    while this column shows whether the devices holding the class moved the model towards it at all.
    """
    return _per_class_means(example_loss, gold, label_names, "loss")


class ClassificationTask(Task):
    """Sequence classification with a fresh head (the encoder path)."""

    def __init__(self) -> None:
        self.label_names = []

    def prepare(self, config: ExperimentConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
        data = load_data(config.data, config.seed)
        seq = config.model.max_seq_len
        train = tokenize(data.train_texts, data.train_labels, tokenizer, seq)
        test = tokenize(data.test_texts, data.test_labels, tokenizer, seq).sorted_by_length()
        self.label_names = list(data.label_names)
        return PreparedData(train, test, data.train_labels, data.label_names)

    def load_model(self, model_dir: Path, num_labels: int, seed: int) -> nn.Module:
        return load_classifier(model_dir, num_labels, seed)

    def evaluate_metrics(self, model: Forward, test: TokenizedSplit, batch_size: int) -> dict[str, float]:
        losses = 0.0
        predicted = torch.empty(len(test), dtype=torch.long)
        example_loss = torch.empty(len(test))
        with torch.no_grad():
            for start, batch in zip(range(0, len(test), batch_size), test.batches(batch_size), strict=True):
                output = model(**batch)
                rows = slice(start, start + len(batch["labels"]))
                losses += float(output.loss) * len(batch["labels"])
                predicted[rows] = output.logits.argmax(-1)
                example_loss[rows] = nn.functional.cross_entropy(
                    output.logits.float(), batch["labels"], reduction="none"
                )
        gold = test.labels.long()
        return {
            "test_loss": losses / len(test),
            "test_accuracy": float((predicted == gold).float().mean()),
            "eval_samples": float(len(test)),
            **class_accuracy_columns(predicted, gold, self.label_names),
            **class_loss_columns(example_loss, gold, self.label_names),
        }


# ---------------------------------------------------------------------------------------------- prompts
def join_choices(words: Sequence[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``: what ``{choices}`` in a prompt template becomes."""
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + f" or {words[-1]}"


class PromptRenderer:
    """Renders prompts as ``prefix + example + suffix`` token ids and appends answers.

    The template is rendered once with a sentinel in place of the example and split around it, so the
    example's own tokens can be truncated to fit ``max_seq_len`` while the template (including the chat
    template's closing tokens and the assistant cue) always survives intact.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        task: TaskConfig,
        max_seq_len: int,
        words: Sequence[str] = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.use_chat = bool(task.chat_template and getattr(tokenizer, "chat_template", None))
        user = _SENTINEL if task.instruction else task.prompt_template.replace("{text}", _SENTINEL)
        user = user.replace("{choices}", join_choices(words))
        if self.use_chat:
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
            )
        else:
            rendered = user + task.answer_prefix
        prefix, _, suffix = str(rendered).partition(_SENTINEL)
        self.prefix_ids = self._ids(prefix)
        self.suffix_ids = self._ids(suffix)
        # Pieces are tokenised without special tokens, so a plain prompt would lose the BOS token its model
        # always saw first (LLaMA, Gemma, Mistral tokenizers add it to every text). A chat template writes its
        # own BOS into the text when its family wants one (Gemma's ``{{ bos_token }}``), as apply_chat_template
        # with tokenize=True also relies on.
        bos = tokenizer.bos_token_id
        adds_bos = bos is not None and list(tokenizer("a")["input_ids"])[:1] == [bos]
        if not self.use_chat and adds_bos and self.prefix_ids[:1] != [bos]:
            self.prefix_ids = [bos, *self.prefix_ids]

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def answer_ids(self, word: str) -> list[int]:
        """Answer tokens: the word right after the chat template's assistant cue, else after a space."""
        return self._ids(word if self.use_chat else " " + word)

    def end_ids(self) -> list[int]:
        """Tokens that end a response the model should learn to stop after.

        With a chat template: the template's own end of an assistant turn (SmolLM2 / Qwen ``<|im_end|>``,
        Gemma ``<end_of_turn>``, Phi-3 ``<|end|>``, Llama-3 ``<|eot_id|>``), read off a rendered two-turn
        conversation up to its first special token, because that, not EOS, is what ends an answer at inference.
        Otherwise (or if the template's turn end holds no special token) end-of-sequence, and for a BERT
        vocabulary without one ``[SEP]``.
        """
        tokenizer = self.tokenizer
        end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        fallback = [end] if end is not None else []
        if not self.use_chat:
            return fallback
        conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _SENTINEL}]
        try:
            rendered = str(tokenizer.apply_chat_template(conversation, tokenize=False))
        except Exception:  # noqa: BLE001 - a template that rejects this shape: fall back to EOS
            return fallback
        tail = self._ids(rendered.partition(_SENTINEL)[2])
        special = set(tokenizer.all_special_ids)
        for k, token in enumerate(tail):
            if token in special:
                return tail[: k + 1]
        return fallback

    def encode(self, texts: Sequence[str], answers: Sequence[list[int]]) -> TokenizedSplit:
        """Prompt + answer per example, right-padded; labels are -100 except on the answer tokens."""
        fixed = len(self.prefix_ids) + len(self.suffix_ids)
        if fixed + 1 >= self.max_seq_len:
            raise ConfigError(
                f"model.max_seq_len: {self.max_seq_len} leaves no room for the example; the prompt template "
                f"alone takes {fixed} tokens; fix: raise model.max_seq_len or shorten task.prompt_template"
            )
        text_ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(texts), self.max_seq_len), pad if pad is not None else 0, dtype=torch.long)
        labels = torch.full_like(ids, IGNORE_INDEX)
        mask = torch.zeros_like(ids)
        room = self.max_seq_len - fixed
        for row, (text, answer) in enumerate(zip(text_ids, answers, strict=True)):
            # The answer may use at most what is left after half the room for the example (long responses
            # are cut, short label words never are).
            answer = list(answer)[: max(1, room - min(len(text), room // 2))]
            text = list(text)[: room - len(answer)]
            prompt = self.prefix_ids + text + self.suffix_ids
            sequence = prompt + answer
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
            labels[row, len(prompt) : len(sequence)] = torch.tensor(answer)
        return TokenizedSplit(ids, mask, labels)


# ---------------------------------------------------------------------------------------------- scoring
def answer_token_logprobs(
    model: Forward, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities of the labelled (answer) tokens of a batch.

    Returns ``(logprobs, example_index, argmax_hit)`` per answer token. Only answer positions go through
    ``log_softmax`` (a full [batch, seq, vocab] log-softmax of a 49k vocabulary would dominate memory).
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    where = targets != IGNORE_INDEX
    picked = logits[:, :-1][where].float()  # [n_answer_tokens, vocab]
    wanted = targets[where]
    logprobs = torch.log_softmax(picked, dim=-1).gather(1, wanted[:, None])[:, 0]
    example = where.nonzero()[:, 0]
    return logprobs, example, picked.argmax(-1) == wanted


def label_scores(
    model: Forward, test: TokenizedSplit, candidates: Sequence[list[int]], batch_size: int
) -> torch.Tensor:
    """``[examples, labels]``: summed log-likelihood of each label's answer tokens after each prompt.

    Every example's prompt is its tokens before the first labelled position. When every label word is a
    single token one forward pass scores them all (:func:`next_token_logprobs`); otherwise each candidate
    answer is appended to the prompt and scored in its own pass.
    """
    scores = torch.empty(len(test), len(candidates))
    prompt_len = _prompt_lengths(test.labels)
    if all(len(c) == 1 for c in candidates):
        ids = torch.tensor([c[0] for c in candidates])
        return next_token_logprobs(model, test.input_ids, prompt_len, batch_size)[:, ids]
    with torch.no_grad():
        for start in range(0, len(test), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(test)))
            lengths = prompt_len[rows]
            for k, candidate in enumerate(candidates):
                batch = _with_answer(test, rows, lengths, candidate)
                logprobs, example, _ = answer_token_logprobs(model, batch)
                scores[rows, k] = torch.zeros(len(rows)).index_add_(0, example, logprobs)
    return scores


def next_token_logprobs(
    model: Forward,
    input_ids: torch.Tensor,
    lengths: torch.Tensor,
    batch_size: int,
    share_prefix: bool = True,
) -> torch.Tensor:
    """``[examples, vocab]`` log-probabilities of the token after each example's first ``lengths[i]`` tokens.

    Why this shape of computation: the LM head of a small LLM is a large share of its forward pass (SmolLM2:
    576 x 49,152, ~20 % of the FLOPs) and its ``[batch, seq, vocab]`` logits dominate memory traffic, yet
    scoring needs the logits of one position per example. Examples are grouped by prompt length, so a group
    needs no padding at all and the model computes the LM head for the last position only
    (``logits_to_keep=1``). The tokens every prompt shares run once (:class:`GroupForward`). Each example's
    result is the one it gets alone, up to float rounding.
    """
    out = torch.empty(len(input_ids), 0)
    with torch.no_grad():
        forward = GroupForward(model, input_ids, lengths, share_prefix)
        for length in torch.unique(lengths).tolist():
            members = torch.nonzero(lengths == length).flatten()
            for start in range(0, len(members), batch_size):
                rows = members[start : start + batch_size]
                last = torch.log_softmax(forward.logits(input_ids[rows, :length], 1)[:, -1].float(), dim=-1)
                if out.shape[1] == 0:
                    out = torch.empty(len(input_ids), last.shape[1])
                out[rows] = last
    return out


#: Fewer shared tokens than this are not worth a cache copy per group.
MIN_SHARED_PREFIX = 4


class GroupForward:
    """Forward passes over groups of same-length rows of one split, computing only what scoring reads.

    * ``logits_to_keep``: the LM head runs for the last ``keep`` positions only (every transformers causal LM
      accepts it; a model that does not gets full logits, of which the same positions are returned).
    * A shared prefix: prompts built from one template share their first tokens (SmolLM2's chat template and
      ``Review:`` are 27 of a rotten-tomatoes prompt's ~70). They run once, in the constructor, and every
      group continues from a copy of their key/value cache, so each shared token is computed once per
      evaluation instead of once per example. ``prompt_lengths`` bound the prefix, so every row still runs
      the positions that scoring reads.
    """

    def __init__(
        self, model: Forward, input_ids: torch.Tensor, prompt_lengths: torch.Tensor, share_prefix: bool = True
    ) -> None:
        self.model = model
        self.keep_supported = True
        shared = _shared_prefix(input_ids, prompt_lengths) if share_prefix else 0
        self.cache = _prefix_cache(model, input_ids[:1, :shared]) if shared >= MIN_SHARED_PREFIX else None
        self.shared = shared if self.cache is not None else 0

    def logits(self, ids: torch.Tensor, keep: int) -> torch.Tensor:
        """Logits of the last ``keep`` positions of ``ids`` (rows of one length, the shared prefix included)."""
        extra: dict[str, Any] = {}
        mask = torch.ones(ids.shape, dtype=torch.long)
        if self.cache is not None:
            keyword, prefix_cache = self.cache
            extra[keyword] = copy.deepcopy(prefix_cache)
            extra[keyword].batch_repeat_interleave(len(ids))
            ids = ids[:, self.shared :]
        if self.keep_supported:
            try:
                return self.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, **extra).logits
            except TypeError:  # a model without logits_to_keep: full logits, same values
                self.keep_supported = False
        return self.model(input_ids=ids, attention_mask=mask, **extra).logits[:, -keep:]


def _shared_prefix(input_ids: torch.Tensor, lengths: torch.Tensor) -> int:
    """How many leading tokens every example shares, leaving each at least one token of its own to run."""
    if len(input_ids) < 2:
        return 0
    limit = int(lengths.min()) - 1
    same = (input_ids[:, :limit] == input_ids[:1, :limit]).all(dim=0)
    differs = torch.nonzero(~same).flatten()
    return int(differs[0]) if len(differs) else max(limit, 0)


def _prefix_cache(model: Forward, prefix: torch.Tensor) -> tuple[str, Any] | None:
    """``(keyword, cache)``: the key/value cache after ``prefix`` (one row) and the forward keyword that takes
    it back (``cache`` in transformers 5, ``past_key_values`` before), or None if the model does not hand
    back one that copies and repeats per batch (transformers' ``Cache`` classes do): scoring then runs whole
    prompts."""
    try:
        out = model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True)
    except TypeError:
        return None
    keyword = "cache" if "cache" in out else "past_key_values"
    cache = out.get(keyword)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    return keyword, cache


def _prompt_lengths(labels: torch.Tensor) -> torch.Tensor:
    answer = labels != IGNORE_INDEX
    if not bool(answer.any(dim=1).all()):
        raise ValueError("every causal-LM example needs at least one answer token (labels != -100)")
    return answer.int().argmax(dim=1)


def _with_answer(
    split: TokenizedSplit, rows: torch.Tensor, lengths: torch.Tensor, answer: list[int]
) -> dict[str, torch.Tensor]:
    width = int(lengths.max()) + len(answer)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    tail = torch.tensor(answer)
    for i, (row, length) in enumerate(zip(rows.tolist(), lengths.tolist(), strict=True)):
        ids[i, :length] = split.input_ids[row, :length]
        ids[i, length : length + len(answer)] = tail
        mask[i, : length + len(answer)] = 1
        labels[i, length : length + len(answer)] = tail
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def answer_loss(
    model: Forward, test: TokenizedSplit, batch_size: int, share_prefix: bool = True
) -> tuple[float, float]:
    """Mean per-example answer loss (mean over its answer tokens) and answer-token argmax accuracy.

    As in :func:`next_token_logprobs`, examples are grouped by length (no padding), the prompts' shared
    first tokens run once, and the model computes logits only for the positions that predict an answer
    token (the answer comes last, so the group's longest answer plus one), not for the whole prompt.
    """
    total, hits, tokens = 0.0, 0, 0
    lengths = test.attention_mask.sum(dim=1)
    prompt_lengths = _prompt_lengths(test.labels)
    span = lengths - prompt_lengths + 1  # last positions whose logits predict the answer
    with torch.no_grad():
        forward = GroupForward(model, test.input_ids, prompt_lengths, share_prefix)
        for length in torch.unique(lengths).tolist():
            members = torch.nonzero(lengths == length).flatten()
            for start in range(0, len(members), batch_size):
                rows = members[start : start + batch_size]
                keep = int(span[rows].max())
                logits = forward.logits(test.input_ids[rows, :length], keep)
                targets = test.labels[rows, length - keep + 1 : length]  # what logits[:, :-1] predict
                where = targets != IGNORE_INDEX
                picked = logits[:, :-1][where].float()
                wanted = targets[where]
                logprobs = torch.log_softmax(picked, dim=-1).gather(1, wanted[:, None])[:, 0]
                example = where.nonzero()[:, 0]
                count = torch.zeros(len(rows)).index_add_(0, example, torch.ones_like(logprobs))
                summed = torch.zeros(len(rows)).index_add_(0, example, logprobs)
                total += float((-summed / count.clamp(min=1)).sum())
                hit = picked.argmax(-1) == wanted
                hits, tokens = hits + int(hit.sum()), tokens + int(hit.numel())
    return total / len(test), hits / max(1, tokens)


class CausalLMTask(Task):
    """A decoder LM fine-tuned on prompted classification or instruction data (LoRA only, head frozen)."""

    def __init__(self, config: TaskConfig) -> None:
        self.config = config
        self.candidates: list[list[int]] = []  # answer tokens per label, for label-word scoring
        self.label_names = []

    def prepare(self, config: ExperimentConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
        if self.config.instruction:
            renderer = PromptRenderer(tokenizer, self.config, config.model.max_seq_len)
            cols = (self.config.instruction_column, self.config.input_column, self.config.output_column)
            if config.data.source == "files":
                pairs = load_instruction_data(config.data, cols, config.seed)
            else:  # a labelled source: instructions built from its texts (data/instructions.py)
                labelled = load_data(config.data, config.seed)
                pairs = instructions_from_labelled(labelled, config.data.source, config.seed)
            # The response ends where the model should stop: its chat turn's end, else EOS (BERT: [SEP]).
            eos = renderer.end_ids()

            def answers(responses: list[str]) -> list[list[int]]:
                return [renderer.answer_ids(r) + eos for r in responses]

            train = renderer.encode(pairs.train_prompts, answers(pairs.train_responses))
            train.answer_logits_only = accepts_logits_to_keep(config.model.path)
            test = renderer.encode(pairs.test_prompts, answers(pairs.test_responses)).sorted_by_length()
            return PreparedData(train, test, np.zeros(len(train), dtype=np.int64), ["response"])
        data = load_data(config.data, config.seed)
        self.label_names = list(data.label_names)
        words = self.label_words(data.label_names)
        renderer = PromptRenderer(tokenizer, self.config, config.model.max_seq_len, words)
        self.candidates = [renderer.answer_ids(w) for w in words]
        if len({tuple(c) for c in self.candidates}) != len(self.candidates):
            raise ConfigError(
                f"task.label_words: {words} tokenise to identical answers; fix: pick distinct words"
            )
        train = renderer.encode(data.train_texts, [self.candidates[y] for y in data.train_labels])
        train.answer_logits_only = accepts_logits_to_keep(config.model.path)
        test = renderer.encode(data.test_texts, [self.candidates[y] for y in data.test_labels])
        test.class_labels = torch.as_tensor(data.test_labels, dtype=torch.long)
        return PreparedData(train, test.sorted_by_length(), data.train_labels, data.label_names)

    def label_words(self, label_names: list[str]) -> list[str]:
        """The answer word of every label (``task.label_words``, else the label name itself)."""
        mapping = self.config.label_words
        unknown = sorted(set(mapping) - set(label_names))
        missing = [n for n in label_names if n not in mapping]
        if mapping and (unknown or missing):
            raise ConfigError(
                f"task.label_words: must map every label {label_names} to a word "
                f"(unknown: {unknown}, missing: {missing})"
            )
        return [mapping.get(name, name) for name in label_names]

    def load_model(self, model_dir: Path, num_labels: int, seed: int) -> nn.Module:  # noqa: ARG002
        return load_causal_lm(model_dir)

    def evaluate_metrics(self, model: Forward, test: TokenizedSplit, batch_size: int) -> dict[str, float]:
        if self.config.instruction or test.class_labels is None:
            loss, accuracy = answer_loss(model, test, batch_size)
            return {
                "test_loss": loss,
                "test_accuracy": accuracy,
                "test_perplexity": perplexity(loss),
                "eval_samples": float(len(test)),
            }
        scores = label_scores(model, test, self.candidates, batch_size)
        predicted, gold = scores.argmax(dim=1), test.class_labels.long()
        # Each example's gold-answer loss, mean over its answer tokens: answer_loss's definition, read off the
        # label scores instead of another forward pass (tests/test_causal_lm.py checks the two agree).
        answer_tokens = torch.tensor([len(c) for c in self.candidates], dtype=torch.float32)
        example_loss = -scores.gather(1, gold[:, None])[:, 0] / answer_tokens[gold]
        loss = float(example_loss.mean())
        return {
            "test_loss": loss,
            "test_accuracy": float((predicted == gold).float().mean()),
            "test_perplexity": perplexity(loss),
            "eval_samples": float(len(test)),
            **class_accuracy_columns(predicted, gold, self.label_names),
            **class_loss_columns(example_loss, gold, self.label_names),
        }


def eval_subset(test: TokenizedSplit, size: int | None, seed: int) -> TokenizedSplit:
    """A fixed, seeded subset of ``size`` test examples, class-stratified (largest remainders), by length.

    Why: evaluating a 135M-parameter LLM on every test prompt after every round cost more CPU than its clients'
    training (benchmarks/README.md, SmolLM2 round breakdown). A fixed subset keeps successive rounds
    comparable (the same examples each time), stratification keeps its class shares (and its majority
    rate) those of the whole split, and the server still evaluates the whole split where it matters
    (``training.eval_full_every``, the last round). ``None`` or a size >= the split: the split itself.
    """
    if size is None or size >= len(test):
        return test
    rng = np.random.default_rng([seed, 23])
    classes = (
        test.class_labels
        if test.class_labels is not None
        else (test.labels if test.labels.ndim == 1 else None)
    )
    if classes is None:
        chosen = rng.choice(len(test), size=size, replace=False)
    else:
        values = classes.numpy()
        labels, counts = np.unique(values, return_counts=True)
        exact = counts * size / len(test)
        take = np.floor(exact).astype(int)
        for j in np.argsort(-(exact - take), kind="stable")[: size - int(take.sum())]:
            take[j] += 1
        chosen = np.concatenate(
            [
                rng.choice(np.flatnonzero(values == label), size=n, replace=False)
                for label, n in zip(labels, take, strict=True)
            ]
        )
    return test.subset(np.sort(chosen)).sorted_by_length()


def accepts_logits_to_keep(model_path: str) -> bool:
    """Whether the causal LM ``model.path`` names takes ``logits_to_keep`` (read from its config.json's
    ``architectures``, without loading it): then training batches skip the prompt's logits
    (``TokenizedSplit.answer_logits_only``)."""
    import inspect

    import transformers

    config = model_config_dict(resolve_model_path(model_path))
    names = config.get("architectures") or []
    model_class = getattr(transformers, str(names[0]), None) if names else None
    if model_class is None:
        return False
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def majority_accuracy(test: TokenizedSplit) -> float:
    """Accuracy of always answering the test set's most frequent class (NaN without classes).

    Why: an accuracy at or below this rate says nothing learned; reports must not pick targets there
    (analysis.comparison.default_targets), and a reader needs it to judge a curve that sits on it.
    """
    classes = test.class_labels if test.class_labels is not None else test.labels
    if classes.ndim != 1 or len(classes) == 0:
        return math.nan
    return float(torch.bincount(classes.long()).max()) / len(classes)


def perplexity(loss: float) -> float:
    """Perplexity of a mean per-token loss (in nats)."""
    return math.exp(min(loss, 50.0))


def build_task(config: ExperimentConfig) -> Task:
    if config.task.kind == "causal_lm":
        return CausalLMTask(config.task)
    return ClassificationTask()
