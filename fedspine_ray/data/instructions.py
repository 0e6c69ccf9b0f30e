"""Instruction/response pairs built from a labelled text source, for instruction tuning without extra data.

Why: no instruction data set with a licence that allows shipping installs offline here (the ``llamafactory``
sdist's ``alpaca_en_demo.json`` is CC BY-NC 4.0 and not a wheel; docs/data.md). The two shipped sources
(tweets, Rotten Tomatoes) become a small instruction set of two kinds, so that the responses are neither
only label words nor unknowable:

* **sentiment**: "Classify the sentiment of this tweet as negative, neutral or positive. Answer in one
  sentence." with the text as input -> "The sentiment is positive." (Rotten Tomatoes: fresh -> positive,
  rotten -> negative);
* **rewrite**: "Rewrite this tweet in lowercase, without punctuation." -> the text lower-cased with every
  character that is not a letter, digit or space removed and spaces collapsed. Only texts of at most
  ``REWRITE_MAX_WORDS`` words and ``REWRITE_MAX_CHARS`` characters, plain ASCII without a link, get it (links and
  mis-decoded characters tokenise into dozens of pieces), so a prompt of ``model.max_seq_len: 96`` is never cut inside a text whose rewrite the
  response still holds whole.

Each training and test example gets one kind, drawn with the seed (half each where the rewrite applies).
The split and the ``max_*_samples`` caps are the source's own (``load_data``), so the test prompts are the
source's held-out texts (Rotten Tomatoes: other movies).
"""

from __future__ import annotations

import re

import numpy as np

from fedspine_ray.data.sources import InstructionData, TextClassificationData

__all__ = ["REWRITE_MAX_CHARS", "REWRITE_MAX_WORDS", "instructions_from_labelled", "rewrite_target"]

#: Longest text (in words, and in characters) that gets the rewrite instruction.
REWRITE_MAX_WORDS = 16
REWRITE_MAX_CHARS = 72
#: What the texts of each shipped source are called in the instructions (others: "text").
TEXT_KINDS = {"tweet_sentiment": "tweet", "rotten_tomatoes": "movie review"}
#: Label name -> the sentiment word of the response (labels not listed answer with their own name).
SENTIMENT_WORDS = {"fresh": "positive", "rotten": "negative"}


def rewrite_target(text: str) -> str:
    """``text`` lower-cased, without anything but letters, digits and single spaces."""
    return " ".join(re.sub(r"[^\w\s]|_", " ", text.lower()).split())


def _pairs(texts: list[str], labels: np.ndarray, names: list[str], kind: str, rng: np.random.Generator):
    words = [SENTIMENT_WORDS.get(n, n) for n in names]
    unique = list(dict.fromkeys(words))
    choices = ", ".join(unique[:-1]) + f" or {unique[-1]}" if len(unique) > 1 else unique[0]
    classify = f"Classify the sentiment of this {kind} as {choices}. Answer in one sentence."
    rewrite = f"Rewrite this {kind} in lowercase, without punctuation."
    prompts, responses = [], []
    for text, label in zip(texts, labels, strict=True):
        text = " ".join(str(text).split())
        short = len(text.split()) <= REWRITE_MAX_WORDS and len(text) <= REWRITE_MAX_CHARS
        short = short and text.isascii() and "http" not in text.lower() and rewrite_target(text) != ""
        if short and rng.random() < 0.5:
            prompts.append(f"{rewrite}\n\n{text}")
            responses.append(rewrite_target(text))
        else:
            prompts.append(f"{classify}\n\n{text}")
            responses.append(f"The sentiment is {words[int(label)]}.")
    return prompts, responses


def instructions_from_labelled(data: TextClassificationData, source: str, seed: int) -> InstructionData:
    """The instruction set of the module docstring built from ``data`` (a labelled source's splits)."""
    kind = TEXT_KINDS.get(source, "text")
    rng = np.random.default_rng([seed, 29])
    train = _pairs(list(data.train_texts), np.asarray(data.train_labels), list(data.label_names), kind, rng)
    test = _pairs(list(data.test_texts), np.asarray(data.test_labels), list(data.label_names), kind, rng)
    return InstructionData(
        train_prompts=train[0], train_responses=train[1], test_prompts=test[0], test_responses=test[1]
    )
