"""Chains: langchain-core Runnables that return typed objects from a local model."""

from castline.chains.base import Chain
from castline.chains.structured import StructuredChain, default_model

__all__ = ["Chain", "StructuredChain", "default_model"]
