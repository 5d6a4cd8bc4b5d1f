"""The llama.cpp engine: a GGUF model run by llama-cpp-python (the optional ``llamacpp`` extra)."""

from castline.models.llamacpp.engine import LlamaCppEngine, load_llamacpp

__all__ = ["LlamaCppEngine", "load_llamacpp"]
