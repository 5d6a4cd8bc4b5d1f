"""Start a local vLLM server the way castline needs it (the tests, the benchmarks, a first try).

vLLM lives in its own virtual environment (its torch and dependencies pin differently from
castline's); ``python`` is that environment's interpreter, with castline installed in it for the
span plugin. The flags are the serving guide's (README, "Serving"): the model directory castline
loads its tokenizer from, LoRA adapters loadable at run time, and castline's span plugin.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from castline.schemas.errors import ServerError

VLLM_PYTHON_ENV = "CASTLINE_VLLM_PYTHON"
SPAN_PLUGIN = "castline.models.server.vllm_spans:CastlineSpans"


def vllm_command(
    python: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    port: int,
    *,
    served_name: str = "smollm2",
    dtype: str = "float32",
    max_model_len: int = 2048,
    lora: bool = True,
    span_plugin: bool = True,
    block_size: int | None = 32,
    grammar_backend: str = "guidance",
) -> list[str]:
    """The command line of a vLLM OpenAI-compatible server for castline.

    ``block_size`` is the prefix cache's granularity. The CPU build's default of 128 recomputes up
    to 127 cached prompt tokens for every label-trie request; 32 scored 6 labels 5x faster here
    (16 does not start on CPU). None keeps vLLM's default.

    ``grammar_backend`` is vLLM's structured-output backend. "guidance" (llguidance) never
    accepted an instance its schema forbids in ``benchmarks/grammar_backends.py``, where vLLM's
    default, xgrammar, accepted 39 of 244 (it ignores ``not``, and length limits beside a pattern).
    """
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--served-model-name", served_name,
        "--dtype", dtype,
        "--max-model-len", str(max_model_len),
        "--port", str(port),
        # Chosen tokens' log-probs after the span plugin's mask, as the in-process engines report
        # them (vLLM's default reads them before logits processors).
        "--logprobs-mode", "processed_logprobs",
        "--structured-outputs-config", json.dumps({"backend": grammar_backend}),
    ]  # fmt: skip
    if lora:
        command += ["--enable-lora", "--max-lora-rank", "16", "--max-loras", "4"]
    if span_plugin:
        command += ["--logits-processors", SPAN_PLUGIN]
    if block_size is not None:
        command += ["--block-size", str(block_size)]
    return command


def vllm_environment() -> dict[str, str]:
    """Environment for vLLM's CPU build: a small KV cache, threads bound to this machine's cores."""
    cores = os.cpu_count() or 1
    return {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),  # GiB
        # "all" crashes the CPU build; an explicit core range works.
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", f"0-{cores - 1}"),
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",  # castline loads adapters by path at run time
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_vllm(
    python: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    log_path: str | os.PathLike[str],
    *,
    start_timeout: float = 600.0,
    **options: object,
) -> Iterator[str]:
    """A vLLM server for the block's duration; yields its base URL. Its output goes to ``log_path``."""
    port = free_port()
    command = vllm_command(python, model_dir, port, **options)  # type: ignore[arg-type]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=vllm_environment())
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise ServerError(f"vLLM exited with code {process.returncode}; its log: {log_path}")
            try:
                if httpx.get(f"{base_url}/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"vLLM did not answer within {start_timeout:.0f} s; its log: {log_path}")
            time.sleep(2)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def default_vllm_python(root: str | os.PathLike[str] = ".") -> Path:
    """``$CASTLINE_VLLM_PYTHON``, else ``.venv-vllm`` under ``root`` (what ``make vllm`` builds)."""
    return Path(os.environ.get(VLLM_PYTHON_ENV) or Path(root) / ".venv-vllm" / "bin" / "python")
