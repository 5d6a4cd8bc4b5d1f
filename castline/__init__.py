"""castline: typed, validated objects from a local language model.

The subpackages are the architecture -- ``castline.schemas`` (result and output types, errors),
``castline.prompts`` (Jinja templates), ``castline.models`` (the engine seam and the engines),
``castline.chains`` (Runnable chains). The names below are re-exported lazily, so importing
``castline.schemas`` or ``castline.prompts`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "StructuredChain": "castline.chains",
    "Chain": "castline.chains",
    "Classify": "castline.chains",
    "MultiLabelClassify": "castline.chains",
    "RecognizeEntities": "castline.chains",
    "AnswerQuestion": "castline.chains",
    "Extract": "castline.chains",
    "Summarize": "castline.chains",
    "Translate": "castline.chains",
    "load_model": "castline.models",
    "Engine": "castline.models",
    "FakeEngine": "castline.models",
    "TransformersEngine": "castline.models",
    "LlamaCppEngine": "castline.models",
    "ServerEngine": "castline.models",
    "block_real_models": "castline.models",
    "PromptTemplate": "castline.prompts",
    "GenerationSettings": "castline.schemas",
    "Labels": "castline.schemas",
    "Regex": "castline.schemas",
    "CastlineError": "castline.schemas",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'castline' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
