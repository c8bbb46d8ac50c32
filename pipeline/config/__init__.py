"""Configuration layer: typed study config, validation, Hydra composition of `conf/`.

`pipeline.config` re-exports the typed objects (`StudyConfig` and its parts) and `validate`;
`pipeline.config.compose` is the only place that talks to Hydra. Defaults live in `conf/`
only; `pipeline.config.defaults.with_defaults` completes a partial mapping from there.
The built-in models' config classes live with their models (pipeline.models.plugins.builtin):
`study` (the shape) imports no plugin, the plugins import `study` (never this package), and
`semantics.validate` hands the registry to `ModelsConfig`, so the imports run one way.
"""

from pipeline.config.semantics import validate
from pipeline.config.structured import ConfigError
from pipeline.config.study import (
    DataConfig,
    ModelsConfig,
    RollingWindowConfig,
    RuntimeConfig,
    StudyConfig,
    SyntheticConfig,
    UserModelConfig,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelsConfig",
    "RollingWindowConfig",
    "RuntimeConfig",
    "StudyConfig",
    "SyntheticConfig",
    "UserModelConfig",
    "validate",
]
