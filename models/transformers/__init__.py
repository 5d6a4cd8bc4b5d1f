"""The transformers engine: a Hugging Face decoder in this process (GPUs via accelerate, training)."""

from castline.models.transformers.engine import TransformersEngine, load_transformers

__all__ = ["TransformersEngine", "load_transformers"]
