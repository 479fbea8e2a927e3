"""Typed run configuration: YAML files with `_base_` inheritance, `key.sub=value` overrides, strict validation.

`schema` holds the sections (a dataclass each, a docstring per field), `loading` reads files and overrides,
`validation` turns plain values into the schema's types or fails naming the dotted key, the closest valid
choice and where the value came from. Importing this package is cheap (no torch): the `model:` section
imports the model registry only when it is checked.
"""

from action_launch.config.loading import (
    deep_merge,
    dump_config,
    flatten,
    from_dict,
    load_config,
    load_yaml_with_bases,
    parse_overrides,
    to_dict,
)
from action_launch.config.schema import (
    Aggregate,
    CheckpointConfig,
    Config,
    DataConfig,
    EvalConfig,
    OptimConfig,
    SlurmConfig,
    TrackingConfig,
    TrainConfig,
    field_docs,
)
from action_launch.config.validation import ConfigError, Validator, did_you_mean, must

__all__ = [
    "Aggregate",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "OptimConfig",
    "SlurmConfig",
    "TrackingConfig",
    "TrainConfig",
    "Validator",
    "deep_merge",
    "did_you_mean",
    "dump_config",
    "field_docs",
    "flatten",
    "from_dict",
    "load_config",
    "load_yaml_with_bases",
    "must",
    "parse_overrides",
    "to_dict",
]
