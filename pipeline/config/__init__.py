"""Configuration layer: typed study config, validation, Hydra composition of `conf/`.

`pipeline.config` re-exports the typed objects (`StudyConfig` and its parts) and `validate`;
`pipeline.config.compose` is the only place that talks to Hydra.
"""

from pipeline.config.structured import ConfigError
from pipeline.config.study import (
    MODEL_NAMES,
    ArQrConfig,
    DataConfig,
    EnsembleNNConfig,
    LqrConfig,
    ModelsConfig,
    RollingWindowConfig,
    RuntimeConfig,
    StudyConfig,
    SyntheticConfig,
    validate,
)

__all__ = [
    "MODEL_NAMES",
    "ArQrConfig",
    "ConfigError",
    "DataConfig",
    "EnsembleNNConfig",
    "LqrConfig",
    "ModelsConfig",
    "RollingWindowConfig",
    "RuntimeConfig",
    "StudyConfig",
    "SyntheticConfig",
    "validate",
]
