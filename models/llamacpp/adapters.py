"""castline's PEFT LoRA adapters as GGUF LoRA files that llama.cpp loads next to the base GGUF.

A GGUF LoRA holds, for each adapted weight, the PEFT matrices under the base tensor's GGUF name
(``blk.3.attn_q.weight.lora_a`` / ``.lora_b``), the architecture, and ``adapter.lora.alpha``;
llama.cpp scales each product by alpha / rank, as PEFT does. Llama-architecture GGUFs store the
query and key projections with their rows permuted for llama.cpp's rotary embedding, so the
output side (``lora_b``) of those adapters is permuted the same way; without it the adapter runs,
slightly wrong (measured: label log-probs off by ~1.2 nats on a trained adapter). Only the llama
architecture, where this is known and tested, is converted. The file is written once per adapter
content under ``$CASTLINE_CACHE/lora`` and reused.

Refused with a typed error, because llama.cpp would run something else than what was trained:
rsLoRA and DoRA (other scaling / an extra magnitude vector), LoRA biases, saved full layers
(``modules_to_save``), and any weight with no counterpart in the base GGUF (embeddings, the head).
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from castline.models.adapter_files import PEFT_PREFIX, AdapterFiles, check_finite
from castline.models.loading import cache_root
from castline.schemas.errors import ModelLoadError

_SUFFIXES = {".lora_A.weight": "lora_a", ".lora_B.weight": "lora_b"}


@dataclass(frozen=True)
class BaseShape:
    """What the conversion needs to know of the base GGUF (from its metadata)."""

    architecture: str
    block_count: int
    head_count: int
    head_count_kv: int

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> BaseShape:
        arch = str(metadata.get("general.architecture", ""))
        heads = int(metadata.get(f"{arch}.attention.head_count", 0))
        return cls(
            arch,
            int(metadata.get(f"{arch}.block_count", 0)),
            heads,
            int(metadata.get(f"{arch}.attention.head_count_kv", heads)),
        )


def gguf_lora_path(files: AdapterFiles, base: BaseShape) -> Path:
    """The GGUF LoRA file of ``files`` for the ``base`` model, converted on first use."""
    target = cache_root() / "lora" / f"{files.content_hash}-{base.architecture}.gguf"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        _convert(files, base, target)
    return target


def _rope_permuted(lora_b: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a query/key projection in llama.cpp's rotary layout (each head's halves interleaved)."""
    rows = lora_b.shape[0]
    return (
        lora_b.reshape(heads, 2, rows // heads // 2, *lora_b.shape[1:]).swapaxes(1, 2).reshape(lora_b.shape)
    )


def _refusals(config: dict) -> list[str]:
    reasons = []
    if config.get("use_rslora"):
        reasons.append("rsLoRA scaling")
    if config.get("use_dora"):
        reasons.append("DoRA")
    if config.get("bias", "none") != "none":
        reasons.append(f"LoRA biases (bias={config.get('bias')!r})")
    if config.get("modules_to_save"):
        reasons.append(f"saved full layers ({config['modules_to_save']})")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        reasons.append("per-layer rank or alpha patterns")
    return reasons


def _convert(files: AdapterFiles, base: BaseShape, target: Path) -> None:
    import gguf
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    refused = _refusals(files.config)
    if refused:
        raise ModelLoadError(
            f"adapter {files.directory} uses {', '.join(refused)}, which llama.cpp cannot run as trained; "
            "use engine='transformers' for it"
        )
    if base.architecture != "llama":
        raise ModelLoadError(
            f"adapters are converted for llama-architecture GGUFs only, not {base.architecture!r} "
            "(the tensor layouts of others are not verified); use engine='transformers' for it"
        )
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, base.block_count)
    try:
        state = load_file(files.weights)
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{files.directory}: adapter weights are damaged or not float ({exc})") from exc
    tensors: dict[str, np.ndarray] = {}
    for key, value in state.items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            raise ModelLoadError(f"adapter {files.directory} holds {key}, which is not a LoRA matrix")
        hf_name = key.removeprefix(PEFT_PREFIX)[: -len(suffix)] + ".weight"
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight",))
        if gguf_name is None or gguf_name.startswith(("token_embd", "output.")):
            raise ModelLoadError(
                f"adapter {files.directory} adapts {hf_name}, which a GGUF LoRA cannot target; "
                "use engine='transformers' for it"
            )
        array = np.asarray(value, dtype=np.float32)
        check_finite(files, key, array)
        if suffix == ".lora_B.weight" and ".attn_q." in gguf_name:
            array = _rope_permuted(array, base.head_count)
        elif suffix == ".lora_B.weight" and ".attn_k." in gguf_name:
            array = _rope_permuted(array, base.head_count_kv)
        array = np.ascontiguousarray(array)
        tensors[f"{gguf_name}.{_SUFFIXES[suffix]}"] = array
    # Written beside the target and renamed: an interrupted conversion leaves no half file.
    handle, staging = tempfile.mkstemp(prefix=".converting-", suffix=".gguf", dir=target.parent)
    os.close(handle)
    try:
        writer = gguf.GGUFWriter(staging, base.architecture)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(files.config.get("lora_alpha", 8)))
        for name, array in sorted(tensors.items()):
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def set_context_adapter(lib: Any, ctx: Any, pointer: Any) -> None:
    """Make ``pointer`` (a loaded GGUF LoRA, or None) the only adapter of the llama.cpp context ``ctx``.

    The caller drops the context's KV cache: keys and values computed under another adapter are
    not those of this one.
    """
    chosen = [pointer] if pointer is not None else []
    array = (lib.llama_adapter_lora_p_ctypes * max(1, len(chosen)))(*chosen)
    scales = (ctypes.c_float * max(1, len(chosen)))(*([1.0] * len(chosen)))
    if lib.llama_set_adapters_lora(ctx, array, len(chosen), scales):
        raise ModelLoadError("llama.cpp could not set the adapter on its context")
