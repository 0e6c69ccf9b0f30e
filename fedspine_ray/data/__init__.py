"""Task data: pluggable sources of labelled text, client partitioning and tokenisation."""

from fedspine_ray.data.partition import label_histogram, partition_indices
from fedspine_ray.data.sources import (
    TextClassificationData,
    available_sources,
    load_data,
    read_table,
    register_source,
)
from fedspine_ray.data.tokens import TokenizedSplit, tokenize

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
