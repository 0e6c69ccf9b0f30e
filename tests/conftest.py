"""Shared fixtures: a tiny real LLaMA model on disk, small real data files, and one local Ray per session."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer GQA LLaMA saved with save_pretrained (tokenizer borrowed from the packaged MiniLM)."""
    from fedspine_ray.modeling.loading import create_tiny_llama

    return create_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_text_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small, learnable 2-class task from the packaged tweet corpus (positive vs negative)."""
    from fedspine_ray.config import DataConfig
    from fedspine_ray.data.sources import tweet_sentiment_source

    data = tweet_sentiment_source(DataConfig(), seed=0)
    frame = pd.DataFrame(
        {"text": data.train_texts, "label": [data.label_names[i] for i in data.train_labels]}
    )
    frame = frame[frame["label"] != "neutral"].groupby("label").head(300)
    path = tmp_path_factory.mktemp("data") / "tweets.csv"
    frame.sample(frac=1.0, random_state=0).to_csv(path, index=False)
    return path


#: Device classes whose custom Ray resources the shared test cluster advertises (shipped + test-defined).
DEVICE_CLASSES_USED_IN_TESTS = ("jetson_nano", "agx_orin", "xavier_nx", "slow_box", "fast_box")


@pytest.fixture()
def profiles_path(tmp_path: Path) -> Path:
    """A user device-profile file with the two test classes of ``test_e2e_fedspine.PROFILES``."""
    import yaml

    from .test_e2e_fedspine import PROFILES

    path = tmp_path / "profiles.yaml"
    path.write_text(yaml.safe_dump(PROFILES))
    return path


@pytest.fixture(scope="session")
def ray_session():
    """One embedded local Ray for all Ray tests (starting Ray costs seconds on 2 cores)."""
    import ray

    from fedspine_ray.launch.ray_session import WORKER_ENV

    os.environ.update(WORKER_ENV)
    ray.init(
        address="local",  # a new embedded Ray even when a test cluster (or `ray start`) left its address behind
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": WORKER_ENV},
        resources={f"fedspine_{name}": 1000.0 for name in DEVICE_CLASSES_USED_IN_TESTS},
    )
    yield ray
    ray.shutdown()
