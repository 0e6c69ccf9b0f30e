"""Experiment configuration: typed sections, loading, and the names configs may use.

Role: turn YAML / ``--set`` values into one frozen, validated :class:`ExperimentConfig`, or a one-line
:class:`ConfigError` naming the field and the fix.
May import: nothing of fedspine_ray outside this package (it is the bottom layer every other package
imports), and no torch or Ray: the launching process validates configs before anything heavy loads.
"""

from fedspine_ray.config.errors import ConfigError, require
from fedspine_ray.config.loader import (
    DEFAULT_CONFIG_NAME,
    config_from_dict,
    load_config,
    read_yaml,
    shipped_config_path,
    yaml_error_summary,
)
from fedspine_ray.config.sections import (
    DEFAULT_PROMPT,
    BanditConfig,
    ClientsConfig,
    DataConfig,
    DevicesConfig,
    ExperimentConfig,
    LoraConfig,
    MethodConfig,
    ModelConfig,
    PartitionConfig,
    PruningConfig,
    ResourceSpec,
    RoundsConfig,
    RuntimeConfig,
    ServerConfig,
    TaskConfig,
    TrainingConfig,
)

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "DEFAULT_PROMPT",
    "BanditConfig",
    "ClientsConfig",
    "ConfigError",
    "DataConfig",
    "DevicesConfig",
    "ExperimentConfig",
    "LoraConfig",
    "MethodConfig",
    "ModelConfig",
    "PartitionConfig",
    "PruningConfig",
    "ResourceSpec",
    "RoundsConfig",
    "RuntimeConfig",
    "ServerConfig",
    "TaskConfig",
    "TrainingConfig",
    "config_from_dict",
    "load_config",
    "read_yaml",
    "require",
    "shipped_config_path",
    "yaml_error_summary",
]
