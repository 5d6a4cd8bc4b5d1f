"""Label scoring in llama.cpp: every continuation of a prompt in one decode, as a token trie.

A second llama.cpp context (the generation context keeps a single sequence) holds the prompt in
sequence 0. Each continuation gets its own sequence that shares the prompt's cells (a copy of
the cell metadata, not of the keys and values), and the trie's nodes go into one batch: a node
belongs to the sequences of every continuation below it and sits at the prompt length plus its
depth, so it attends to the prompt and its own ancestors only -- what the transformers engine
does with a 4D attention mask. Logits are read only at nodes with children; the first tokens'
distribution is the prompt's last logits. Consecutive prompts reuse their common prefix.

More continuations than the context has sequences are scored in groups over the same prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from castline.models.llamacpp.adapters import set_context_adapter
from castline.models.token_trie import TokenTrie
from castline.schemas.errors import ModelLoadError

_MAX_SEQUENCES = 128  # sequences per context: continuations scored in one decode


class TrieScorer:
    """A scoring context over a loaded llama.cpp model."""

    def __init__(self, llm: Any, lib: Any) -> None:
        from llama_cpp import _internals

        self.lib = lib
        self.n_vocab = llm.n_vocab()
        # The generation context's settings (attention kernel, threads, RoPE), so both contexts
        # compute the same numbers; the library defaults differ (flash attention on "auto").
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        params.n_batch = params.n_ubatch = min(512, llm.n_ctx())
        params.n_seq_max = min(_MAX_SEQUENCES, lib.llama_max_parallel_sequences())
        params.kv_unified = True  # sequences share the prompt's cells
        try:
            self._context = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        except ValueError as exc:
            raise ModelLoadError(f"llama.cpp could not create a scoring context: {exc}") from exc
        self.ctx = self._context.ctx
        self.memory = lib.llama_get_memory(self.ctx)
        self.n_batch = params.n_batch
        self.n_seq = params.n_seq_max
        self.batch = lib.llama_batch_init(self.n_batch, 0, self.n_seq)
        self.tokens: list[int] = []  # what sequence 0 holds
        self.adapter: Any = None

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self._context.close()

    def set_adapter(self, pointer: Any, key: Any) -> None:
        """Run with the LoRA ``pointer`` (None: none); ``key`` names it so the cache is never reused."""
        if key == self.adapter:
            return
        set_context_adapter(self.lib, self.ctx, pointer)
        self.lib.llama_memory_seq_rm(self.memory, -1, -1, -1)
        self.tokens, self.adapter = [], key

    def _decode(self, entries: Sequence[tuple[int, int, Sequence[int], bool]]) -> None:
        """One llama_decode of ``(token, position, sequences, wants_logits)`` entries."""
        batch = self.batch
        for i, (token, position, sequences, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = len(sequences)
            for j, seq in enumerate(sequences):
                batch.seq_id[i][j] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(entries)
        status = self.lib.llama_decode(self.ctx, batch)
        if status != 0:
            raise ModelLoadError(f"llama.cpp failed to decode a scoring batch (status {status})")

    def _logprobs(self, index: int) -> np.ndarray:
        pointer = self.lib.llama_get_logits_ith(self.ctx, index)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).astype(np.float64)
        top = logits.max()
        return logits - (top + np.log(np.exp(logits - top).sum()))

    def _prompt(self, ids: list[int]) -> np.ndarray:
        """Sequence 0 := ``ids`` (reusing the common prefix); log-probs after its last token."""
        kept = 0
        limit = min(len(self.tokens), len(ids) - 1)  # re-evaluate at least one token for its logits
        while kept < limit and self.tokens[kept] == ids[kept]:
            kept += 1
        self.lib.llama_memory_seq_rm(self.memory, -1, kept, -1)
        for start in range(kept, len(ids), self.n_batch):
            chunk = ids[start : start + self.n_batch]
            last = start + len(chunk) == len(ids)
            self._decode([(t, start + k, (0,), last and k == len(chunk) - 1) for k, t in enumerate(chunk)])
        self.tokens = list(ids)
        return self._logprobs(-1)

    def score(self, ids: list[int], sequences: Sequence[Sequence[int]]) -> list[float]:
        """Summed log P(sequence | ids) for every sequence."""
        first = self._prompt(ids)
        out = [0.0] * len(sequences)
        group = self.n_seq - 1  # sequence 0 holds the prompt
        for start in range(0, len(sequences), group):
            members = list(range(start, min(len(sequences), start + group)))
            self._score_group(len(ids), first, sequences, members, out)
        return out

    def _score_group(
        self,
        n_prompt: int,
        first: np.ndarray,
        sequences: Sequence[Sequence[int]],
        members: list[int],
        out: list[float],
    ) -> None:
        trie = TokenTrie.build([sequences[m] for m in members])
        owners: list[set[int]] = [set() for _ in range(len(trie))]  # sequences each node belongs to
        for offset, path in enumerate(trie.paths):
            self.lib.llama_memory_seq_cp(self.memory, 0, offset + 1, -1, -1)  # share the prompt's cells
            for node in path:
                owners[node].add(offset + 1)
        has_children = {p for p in trie.parents if p >= 0}
        logprob = [float(first[trie.tokens[n]]) if trie.parents[n] < 0 else 0.0 for n in range(len(trie))]
        # Parents come before their children, so chunks in node order keep every ancestor in the
        # cache before a node needs it; each parent's row is read right after its chunk.
        for start in range(0, len(trie), self.n_batch):
            chunk = range(start, min(len(trie), start + self.n_batch))
            entries = [
                (trie.tokens[n], n_prompt + trie.depths[n], sorted(owners[n]), n in has_children)
                for n in chunk
            ]
            self._decode(entries)
            for index, node in enumerate(chunk):
                if node in has_children:
                    row = self._logprobs(index)
                    for child in trie.children(node):
                        logprob[child] = float(row[trie.tokens[child]])
        for offset, member in enumerate(members):
            out[member] = sum(logprob[n] for n in trie.paths[offset])
        for seq in range(1, len(members) + 1):
            self.lib.llama_memory_seq_rm(self.memory, seq, -1, -1)
