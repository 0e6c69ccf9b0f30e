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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedspine_ray.config import ConfigError, ExperimentConfig, TaskConfig
from fedspine_ray.data import load_data, tokenize
from fedspine_ray.data.sources import load_instruction_data
from fedspine_ray.data.tokens import TokenizedSplit
from fedspine_ray.modeling.backend import Forward
from fedspine_ray.modeling.loading import load_causal_lm, load_classifier

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

    def prepare(self, config: ExperimentConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
        raise NotImplementedError

    def load_model(self, model_dir: Path, num_labels: int, seed: int) -> nn.Module:
        raise NotImplementedError

    def evaluate(self, model: Forward, test: TokenizedSplit, batch_size: int) -> tuple[float, float]:
        """(mean test loss, accuracy) of ``model`` (a module or the server backend's forward)."""
        raise NotImplementedError


class ClassificationTask(Task):
    """Sequence classification with a fresh head (the encoder path)."""

    def prepare(self, config: ExperimentConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
        data = load_data(config.data, config.seed)
        seq = config.model.max_seq_len
        train = tokenize(data.train_texts, data.train_labels, tokenizer, seq)
        test = tokenize(data.test_texts, data.test_labels, tokenizer, seq).sorted_by_length()
        return PreparedData(train, test, data.train_labels, data.label_names)

    def load_model(self, model_dir: Path, num_labels: int, seed: int) -> nn.Module:
        return load_classifier(model_dir, num_labels, seed)

    def evaluate(self, model: Forward, test: TokenizedSplit, batch_size: int) -> tuple[float, float]:
        losses, correct = 0.0, 0
        with torch.no_grad():
            for batch in test.batches(batch_size):
                output = model(**batch)
                losses += float(output.loss) * len(batch["labels"])
                correct += int((output.logits.argmax(-1) == batch["labels"]).sum())
        return losses / len(test), correct / len(test)


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

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def answer_ids(self, word: str) -> list[int]:
        """Answer tokens: the word right after the chat template's assistant cue, else after a space."""
        return self._ids(word if self.use_chat else " " + word)

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
    single token one forward pass scores them all (the next-token distribution after the prompt);
    otherwise each candidate answer is appended to the prompt and scored in its own pass.
    """
    scores = torch.empty(len(test), len(candidates))
    prompt_len = _prompt_lengths(test.labels)
    single = all(len(c) == 1 for c in candidates)
    with torch.no_grad():
        for start in range(0, len(test), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(test)))
            lengths = prompt_len[rows]
            if single:
                length = int(lengths.max())
                logits = model(
                    input_ids=test.input_ids[rows, :length], attention_mask=test.attention_mask[rows, :length]
                ).logits
                last = logits[torch.arange(len(rows)), lengths - 1].float()
                ids = torch.tensor([c[0] for c in candidates])
                scores[rows] = torch.log_softmax(last, dim=-1)[:, ids]
                continue
            for k, candidate in enumerate(candidates):
                batch = _with_answer(test, rows, lengths, candidate)
                logprobs, example, _ = answer_token_logprobs(model, batch)
                scores[rows, k] = torch.zeros(len(rows)).index_add_(0, example, logprobs)
    return scores


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


def answer_loss(model: Forward, test: TokenizedSplit, batch_size: int) -> tuple[float, float]:
    """Mean per-example answer loss (mean over its answer tokens) and answer-token argmax accuracy."""
    total, hits, tokens = 0.0, 0, 0
    with torch.no_grad():
        for batch in test.batches(batch_size):
            logprobs, example, hit = answer_token_logprobs(model, batch)
            count = torch.zeros(len(batch["labels"])).index_add_(0, example, torch.ones_like(logprobs))
            summed = torch.zeros(len(batch["labels"])).index_add_(0, example, logprobs)
            total += float((-summed / count.clamp(min=1)).sum())
            hits, tokens = hits + int(hit.sum()), tokens + int(hit.numel())
    return total / len(test), hits / max(1, tokens)


class CausalLMTask(Task):
    """A decoder LM fine-tuned on prompted classification or instruction data (LoRA only, head frozen)."""

    def __init__(self, config: TaskConfig) -> None:
        self.config = config
        self.candidates: list[list[int]] = []  # answer tokens per label, for label-word scoring

    def prepare(self, config: ExperimentConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
        if self.config.instruction:
            renderer = PromptRenderer(tokenizer, self.config, config.model.max_seq_len)
            cols = (self.config.instruction_column, self.config.input_column, self.config.output_column)
            pairs = load_instruction_data(config.data, cols, config.seed)
            # The response ends with end-of-sequence so the model learns to stop (BERT vocabularies: [SEP]).
            end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
            eos = [end] if end is not None else []

            def answers(responses: list[str]) -> list[list[int]]:
                return [renderer.answer_ids(r) + eos for r in responses]

            train = renderer.encode(pairs.train_prompts, answers(pairs.train_responses))
            test = renderer.encode(pairs.test_prompts, answers(pairs.test_responses)).sorted_by_length()
            return PreparedData(train, test, np.zeros(len(train), dtype=np.int64), ["response"])
        data = load_data(config.data, config.seed)
        words = self.label_words(data.label_names)
        renderer = PromptRenderer(tokenizer, self.config, config.model.max_seq_len, words)
        self.candidates = [renderer.answer_ids(w) for w in words]
        if len({tuple(c) for c in self.candidates}) != len(self.candidates):
            raise ConfigError(
                f"task.label_words: {words} tokenise to identical answers; fix: pick distinct words"
            )
        train = renderer.encode(data.train_texts, [self.candidates[y] for y in data.train_labels])
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

    def evaluate(self, model: Forward, test: TokenizedSplit, batch_size: int) -> tuple[float, float]:
        if self.config.instruction or test.class_labels is None:
            return answer_loss(model, test, batch_size)
        scores = label_scores(model, test, self.candidates, batch_size)
        accuracy = float((scores.argmax(dim=1) == test.class_labels).float().mean())
        if all(len(c) == 1 for c in self.candidates):
            # one-token answers: the gold answer's loss is read off the same scores (one forward pass)
            return float(-scores.gather(1, test.class_labels[:, None]).mean()), accuracy
        return answer_loss(model, test, batch_size)[0], accuracy


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
