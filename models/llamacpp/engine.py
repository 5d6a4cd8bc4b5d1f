"""``LlamaCppEngine``: a GGUF model run by llama.cpp (llama-cpp-python), behind the engine seam.

It loads the shipped GGUF as it is -- no dequantization, no conversion cache -- and decodes
several times faster than transformers on a CPU. The same decoding rules as the transformers
engine (``castline.models.decoding``) mask llama.cpp's logits, over a ``TokenTable`` read from
the GGUF's own vocabulary, so a constraint means the same on both engines.

How it drives llama.cpp: a generation context keeps the tokens evaluated so far, and a new
prompt reuses the longest common prefix of its tokens (the KV cache of an instruction and
few-shot turns is computed once for a whole batch). Decoding is a plain loop -- logits of the
last token, the cursor's mask, argmax or a seeded draw -- so log-probs of chosen tokens come for
free. ``score`` runs in a second context that decodes all continuations of a prompt at once as a
token trie over several sequences (``castline.models.llamacpp.scoring``).

A llama.cpp context is not thread-safe: every call holds the engine's lock, and a batch runs its
requests in turn.

Adapters: castline's PEFT adapters are converted once to GGUF LoRA files
(``castline.models.llamacpp.adapters``) and loaded next to the model; each request sets its own
adapter on the context, and the KV cache is never reused across adapters (the same tokens have
other keys and values under another adapter). Training and merging stay with transformers.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from castline.models.decoding import Cursor, TokenTable
from castline.models.llamacpp.adapters import set_context_adapter
from castline.models.llamacpp.scoring import TrieScorer
from castline.models.loading import resolve_source
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
    check_real_models_allowed,
    format_with_literals,
    plain_chat_text,
    prompt_too_long,
)
from castline.prompts.templates import Message
from castline.schemas.errors import CastlineError, InvalidInputError, ModelLoadError, OutputTypeError
from castline.schemas.output_types import OutputSpec
from castline.schemas.settings import GenerationSettings


class LlamaCppEngine(Engine):
    """A GGUF model in a llama.cpp context.

    >>> engine = load_model(engine="llamacpp")       # the embedded SmolLM2 GGUF, as shipped
    """

    engine_name: ClassVar[str] = "llamacpp"
    capabilities: frozenset[Capability] = frozenset(
        {Capability.GRAMMAR, Capability.SPANS, Capability.SCORE, Capability.ADAPTERS, Capability.STREAMING}
    )

    def __init__(self, llm: Any, name: str) -> None:
        super().__init__()
        import llama_cpp

        self._lib = llama_cpp
        self.llm = llm
        self.name = name
        self.max_context = int(llm.n_ctx())
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self.eos_id = int(llm.token_eos())
        self._lock = threading.RLock()
        self._loras: dict[str, Any] = {}  # adapter name -> llama_adapter_lora pointer
        self._active: str | None = None  # the adapter the context (and its KV cache) runs with
        self._trie_scorer: TrieScorer | None = None
        self.token_table = self._read_token_table()
        self._chat_template = _compile_chat_template(llm.metadata.get("tokenizer.chat_template"))
        self._bos_text = self._piece(int(llm.token_bos()), special=True).decode("utf-8", "replace")
        self._eos_text = self._piece(self.eos_id, special=True).decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"LlamaCppEngine({self.name!r}, n_ctx={self.max_context})"

    # -- vocabulary ----------------------------------------------------------------------------

    def _piece(self, token: int, special: bool) -> bytes:
        buffer = ctypes.create_string_buffer(256)
        n = self._lib.llama_token_to_piece(self._vocab, token, buffer, 256, 0, special)
        return buffer.raw[: max(n, 0)]

    def _read_token_table(self) -> TokenTable:
        pieces: list[bytes | None] = []
        special = []
        for token in range(self.llm.n_vocab()):
            plain = self._piece(token, special=False)
            # Control tokens have no text unless printed as special: they are never content.
            if not plain and self._piece(token, special=True):
                special.append(token)
                pieces.append(None)
            else:
                pieces.append(plain or None)
        return TokenTable(pieces, self.eos_id, special, encode=self.encode_text)

    # -- prompts and tokens --------------------------------------------------------------------

    def chat_prompt(self, messages: Sequence[Message]) -> Prompt:
        if self._chat_template is None:
            text = plain_chat_text(messages)
        else:
            text = self._chat_template.render(
                messages=list(messages),
                add_generation_prompt=True,
                bos_token=self._bos_text,
                eos_token=self._eos_text,
            )
        return format_with_literals(text, messages)

    def _tokenize(self, text: str, special: bool) -> list[int]:
        if not text:
            return []
        return list(self.llm.tokenize(text.encode(), add_bos=False, special=special))

    def encode_prompt(self, prompt: Prompt | str) -> list[int]:
        """Token ids of ``prompt``; its literal pieces never become control tokens."""
        if isinstance(prompt, str):
            prompt = Prompt(prompt)
        ids: list[int] = []
        for text, literal in prompt.pieces():
            ids += self._tokenize(text, special=not literal)
        return ids

    def encode_text(self, text: str) -> list[int]:
        """Token ids of plain ``text`` (a continuation)."""
        return self._tokenize(text, special=False)

    def prompt_length(self, prompt: Prompt) -> int:
        return len(self.encode_prompt(prompt))

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        data = text.encode()
        char_at = np.zeros(len(data) + 1, dtype=np.int64)  # byte offset -> character offset
        at = 0
        for i, ch in enumerate(text):
            n = len(ch.encode())
            char_at[at : at + n] = i
            at += n
        char_at[len(data)] = len(text)
        offsets, pos = [], 0
        for token in self._tokenize(text, special=False):
            piece = self.token_table.pieces[token] or b""
            if not data.startswith(piece, pos) and piece.startswith(b" ") and data.startswith(piece[1:], pos):
                piece = piece[1:]  # SentencePiece's space prefix on the first word
            start, pos = pos, min(len(data), pos + len(piece))
            offsets.append((int(char_at[start]), int(char_at[pos])))
        return offsets

    # -- constraints ---------------------------------------------------------------------------

    def prepare(self, constraint: OutputSpec | SpanConstraint | None) -> None:
        self.token_table.prepare(constraint)

    # -- adapters ------------------------------------------------------------------------------

    def load_adapter(self, directory: str | os.PathLike[str], name: str | None = None) -> AdapterInfo:
        from castline.models.adapter_files import already_loaded, read_adapter_files
        from castline.models.llamacpp.adapters import BaseShape, gguf_lora_path

        files = read_adapter_files(directory)
        name = name or files.default_name()
        with self._lock:
            loaded = already_loaded(files, name, self.adapters, self.name)
            if loaded is not None:
                return loaded
            path = gguf_lora_path(files, BaseShape.from_metadata(self.llm.metadata))
            pointer = self._lib.llama_adapter_lora_init(self.llm.model, str(path).encode())
            if not pointer:
                raise ModelLoadError(f"llama.cpp refused the adapter {files.directory} (converted: {path})")
            self._loras[name] = pointer
            info = AdapterInfo(name, files.directory, files.content_hash, files.metadata)
            self.adapters[name] = info
            return info

    def _activate(self, adapter: str | None) -> None:
        """Run the context with ``adapter`` (None: the base model); the KV cache starts over."""
        if adapter == self._active:
            return
        set_context_adapter(self._lib, self.llm.ctx, self._loras[adapter] if adapter is not None else None)
        self.llm.n_tokens = 0  # keys and values computed under the previous adapter are stale
        self._active = adapter

    # -- the context ---------------------------------------------------------------------------

    def _feed(self, ids: list[int]) -> np.ndarray:
        """Evaluate ``ids`` (reusing the common prefix already in the context); the last logits."""
        llm = self.llm
        kept = 0
        current = llm.input_ids[: llm.n_tokens]
        limit = min(len(current), len(ids) - 1)  # re-evaluate at least one token for fresh logits
        while kept < limit and current[kept] == ids[kept]:
            kept += 1
        llm.n_tokens = kept
        llm.eval(ids[kept:])
        return self._last_logits()

    def _last_logits(self) -> np.ndarray:
        pointer = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.llm.n_vocab(),)).astype(np.float32)

    # -- generation ----------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation | CastlineError]:
        results: list[Generation | CastlineError] = []
        for request in requests:
            self.check_adapter(request.adapter)
            ids = self.encode_prompt(request.prompt)
            if len(ids) + request.max_new_tokens > self.max_context:
                results.append(prompt_too_long(len(ids), request.max_new_tokens, self.max_context))
                continue
            try:
                cursor = self.token_table.cursor(request.constraint)
            except OutputTypeError as exc:
                results.append(exc)
                continue
            with self._lock:
                self._activate(request.adapter)
                results.append(
                    self._decode(ids, cursor, request.settings, request.max_new_tokens, request.on_token)
                )
        return results

    def _decode(
        self,
        ids: list[int],
        cursor: Cursor | None,
        settings: GenerationSettings,
        budget: int,
        on_token: Callable[[bytes], None] | None = None,
    ) -> Generation:
        rng = np.random.default_rng(settings.seed)
        logits = self._feed(ids)
        tokens: list[int] = []
        logprobs: list[float] = []
        allowed = np.zeros(len(logits), dtype=bool)
        for _ in range(budget):
            if cursor is not None:
                allowed[:] = False
                cursor.mask_into(allowed)
                logits = np.where(allowed, logits, -np.inf)
            top = logits.max()
            log_norm = top + np.log(np.exp(logits - top).sum())
            token = _choose(logits, settings, rng)
            tokens.append(token)
            logprobs.append(float(logits[token] - log_norm))
            if cursor is not None:
                cursor.advance(token)
            if token == self.eos_id:
                break
            if on_token is not None:
                on_token(self.token_table.pieces[token] or b"")
            self.llm.eval([token])
            logits = self._last_logits()
        ended = bool(tokens) and tokens[-1] == self.eos_id
        n = len(tokens) - ended
        complete = ended or (cursor is not None and cursor.can_end())
        spans = tuple(SpanMatch(*s) for s in cursor.spans()) if cursor is not None else ()
        return Generation(
            self.token_table.decode(tokens[:n]), tuple(tokens[:n]), complete, tuple(logprobs), spans
        )

    # -- scoring -------------------------------------------------------------------------------

    def score(
        self, prompts: Sequence[Prompt], continuations: Sequence[Continuation], adapter: str | None = None
    ) -> list[list[float]]:
        self.check_adapter(adapter)
        sequences = [
            [*self.encode_text(c.text), *([self.eos_id] if c.end_of_turn else [])] for c in continuations
        ]
        longest = max(len(s) for s in sequences)
        out = []
        with self._lock:
            scorer = self._scorer()
            scorer.set_adapter(self._loras.get(adapter) if adapter else None, adapter)
            for prompt in prompts:
                ids = self.encode_prompt(prompt)
                if len(ids) + longest > self.max_context:
                    raise InvalidInputError(
                        f"a prompt plus its longest continuation needs {len(ids) + longest} tokens, over "
                        f"the context of {self.max_context}; shorten the input"
                    )
                out.append(scorer.score(ids, sequences))
        return out

    def _scorer(self) -> TrieScorer:
        """The scoring context, created on first use (it holds its own KV cache)."""
        if self._trie_scorer is None:
            self._trie_scorer = TrieScorer(self.llm, self._lib)
        return self._trie_scorer


def _choose(logits: np.ndarray, settings: GenerationSettings, rng: np.random.Generator) -> int:
    if settings.temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits / settings.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if settings.top_p < 1.0:
        order = np.argsort(-probs)
        keep = order[: int(np.searchsorted(np.cumsum(probs[order]), settings.top_p)) + 1]
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    return int(rng.choice(len(probs), p=probs))


def _compile_chat_template(source: str | None) -> Any:
    """The GGUF's chat template, rendered in a sandbox like transformers renders it."""
    if not source:
        return None
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


def load_llamacpp(
    source: str | os.PathLike[str] | None = None,
    *,
    n_ctx: int = 2048,
    n_threads: int | None = None,
) -> LlamaCppEngine:
    """Load a GGUF file (or the embedded default) into a llama.cpp context of ``n_ctx`` tokens."""
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise ModelLoadError(
            "the llamacpp engine needs llama-cpp-python: pip install 'castline[llamacpp]' "
            "(it compiles llama.cpp, a few minutes)"
        ) from exc
    info = resolve_source(source)
    check_real_models_allowed(info.name)
    if info.kind != "gguf":
        raise ModelLoadError(
            f"the llamacpp engine loads GGUF files; {info.path} is a transformers directory "
            "(use engine='transformers', or convert it to GGUF with llama.cpp's convert_hf_to_gguf.py)"
        )
    try:
        llm = Llama(
            model_path=str(Path(info.path)),
            n_ctx=n_ctx,
            n_threads=n_threads or os.cpu_count() or 1,
            logits_all=False,
            verbose=False,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadError(
            f"llama.cpp could not load {info.path}: {exc}; is it a complete GGUF file?"
        ) from exc
    return LlamaCppEngine(llm, info.name)
