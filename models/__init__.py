"""Engines behind one seam: the protocol, the in-process engines, a fake for tests, and loading.

Importing ``castline.models`` imports no torch; each engine's module loads its own backend when
it is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from castline.models.loading import ENGINE_ENV, cache_root, default_model_file, load_model, resolve_source
from castline.models.protocol import (
    AdapterInfo,
    Capability,
    Continuation,
    Engine,
    Generation,
    GenerationRequest,
    Prompt,
    SpanConstraint,
    SpanMatch,
    block_real_models,
)

_LAZY = {
    "FakeEngine": "castline.models.fake",
    "TransformersEngine": "castline.models.transformers",
    "LlamaCppEngine": "castline.models.llamacpp",
    "ServerEngine": "castline.models.server",
}

__all__ = [
    "ENGINE_ENV",
    "AdapterInfo",
    "Capability",
    "Continuation",
    "Engine",
    "Generation",
    "GenerationRequest",
    "Prompt",
    "SpanConstraint",
    "SpanMatch",
    "block_real_models",
    "cache_root",
    "default_model_file",
    "load_model",
    "resolve_source",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'castline.models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
