"""DiT architecture (one implementation for all sizes), checkpoints and loaders."""
from .checkpoint import load_dit, read_dit_metadata, save_dit
from .dit import DIT_CONFIGS, DiT, DiTConfig, dit_config
from .registry import BUNDLED_MODELS, ResolvedModel, resolve_model

__all__ = [
    "DIT_CONFIGS", "DiT", "DiTConfig", "dit_config", "load_dit", "read_dit_metadata", "save_dit",
    "BUNDLED_MODELS", "ResolvedModel", "resolve_model",
]
