"""Task data: pluggable sources of labelled text, client partitioning and tokenisation.

Role: :mod:`.sources` (registered sources: shipped datasets and the user's CSV/JSONL/Parquet files),
:mod:`.partition` (how the training split is spread over clients) and :mod:`.tokens` (tensors clients
train on; imported lazily because it needs torch).
May import: config. Never Ray, models or the runtime; the launcher reads sources without torch.
"""

from fedspine_ray.data.partition import label_histogram, partition_indices
from fedspine_ray.data.sources import (
    TextClassificationData,
    available_sources,
    load_data,
    read_table,
    register_source,
)

#: Tokenisation needs torch; it is imported on first use so the launching process, which only checks
#: that sources exist (fedspine_ray.launch.preflight), never loads torch.
_LAZY = {"TokenizedSplit", "tokenize"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from fedspine_ray.data import tokens

        return getattr(tokens, name)
    raise AttributeError(f"module 'fedspine_ray.data' has no attribute {name!r}")


__all__ = [
    "TextClassificationData",
    "TokenizedSplit",
    "available_sources",
    "label_histogram",
    "load_data",
    "partition_indices",
    "read_table",
    "register_source",
    "tokenize",
]
