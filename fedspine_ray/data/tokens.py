"""Tokenised tensors shipped to client actors, so devices never need the tokenizer or raw text."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase


@dataclass
class TokenizedSplit:
    """Padded token ids, attention masks and labels of a set of examples.

    ``labels`` is one class index per example (sequence classification) or, for a causal LM, one target
    per token (-100 outside the answer; the model shifts them itself). ``class_labels`` then keeps each
    example's class for accuracy by label-word scoring (``fedspine_ray.modeling.tasks``); it never enters a batch.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    class_labels: torch.Tensor | None = None
    #: Token-level labels only: batches ask the model for the logits of the positions that predict a labelled
    #: token and no others (``logits_to_keep``, labels cut to match). The answer comes last, so a causal LM's
    #: LM head (SmolLM2: 576 x 49,152) and the softmax over its vocabulary skip the prompt: the same loss, about
    #: 14 % less CPU per LoRA step of the shipped SmolLM2 configs. Set by the causal-LM task when the model's
    #: forward takes ``logits_to_keep`` (every transformers causal LM but a few speech/encoder-decoder ones).
    answer_logits_only: bool = False

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: np.ndarray) -> TokenizedSplit:
        return self._take(torch.as_tensor(indices, dtype=torch.long))

    def _take(self, index: torch.Tensor) -> TokenizedSplit:
        classes = None if self.class_labels is None else self.class_labels[index]
        return TokenizedSplit(
            self.input_ids[index],
            self.attention_mask[index],
            self.labels[index],
            classes,
            self.answer_logits_only,
        )

    def sorted_by_length(self) -> TokenizedSplit:
        """Same examples ordered by length, so evaluation batches carry little padding."""
        return self._take(torch.argsort(self.attention_mask.sum(dim=1), stable=True))

    def batch(self, indices: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """A model-ready batch, trimmed to the longest sequence in it (saves compute on short tweets)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        mask = self.attention_mask[index]
        length = max(1, int(mask.sum(dim=1).max()))
        labels = self.labels[index]
        batch = {
            "input_ids": self.input_ids[index, :length],
            "attention_mask": mask[:, :length],
            "labels": labels[:, :length] if labels.dim() == 2 else labels,
        }
        if self.answer_logits_only and labels.dim() == 2:
            answer = batch["labels"] != -100
            if bool(answer.any(dim=1).all()):
                # logits of the last `keep` positions; the model shifts the labels itself, so they are cut to
                # the same positions: position p's logits are scored against labels[p + 1]
                keep = length - int(answer.int().argmax(dim=1).min()) + 1
                batch["labels"] = batch["labels"][:, length - keep :]
                batch["logits_to_keep"] = keep
        return batch

    def batches(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            yield self.batch(torch.arange(start, min(start + batch_size, len(self))))


def tokenize(
    texts: list[str], labels: np.ndarray, tokenizer: PreTrainedTokenizerBase, max_seq_len: int
) -> TokenizedSplit:
    encoded = tokenizer(
        texts, padding="max_length", truncation=True, max_length=max_seq_len, return_tensors="pt"
    )
    return TokenizedSplit(
        input_ids=encoded["input_ids"],
        attention_mask=encoded["attention_mask"],
        labels=torch.as_tensor(labels, dtype=torch.long),
    )
