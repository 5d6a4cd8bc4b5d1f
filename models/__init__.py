"""Loading local models (accelerate placement) and constrained generation over them."""

from castline.models.loading import cache_root, default_model_file, resolve_source
from castline.models.local import Generation, LocalModel, load_model

__all__ = ["Generation", "LocalModel", "cache_root", "default_model_file", "load_model", "resolve_source"]
