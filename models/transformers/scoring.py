"""Scoring continuations: log-probabilities of many candidate token sequences in one pass.

This is how castline gives a probability for every label instead of a number the model writes.
For each prompt, the candidates (each label's tokens followed by the end-of-turn token) are laid
out as a token trie after the prompt, and one forward pass computes them all: a custom 4D
attention mask lets every trie node see the prompt and its own ancestors only, and position ids
continue from the prompt along each branch. Shared label prefixes ("card_", "transfer_") are
computed once, and the output head runs only at the positions whose next-token distribution is
needed.

The prompts of one call usually share a long prefix (instruction, label list, few-shot turns).
That prefix runs once and its key/value cache is reused by every prompt, as a view, not a copy.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from castline.models.token_trie import TokenTrie
from castline.models.transformers.engine import TransformersEngine
from castline.schemas.errors import InvalidInputError

# Rows per forward pass: keeps the (rows x positions x vocabulary) logits small on a CPU.
SCORING_ROWS = 4


def score_candidates(engine: TransformersEngine, ids: Sequence[list[int]], trie: TokenTrie) -> torch.Tensor:
    """``scores[i, j]``: summed log P(candidate j | prompt i), prompts given as token ids."""
    longest = max(len(x) for x in ids) + max(trie.depths) + 2
    if longest > engine.max_context:
        raise InvalidInputError(
            f"a prompt plus its longest candidate needs {longest} tokens, over the model's context "
            f"of {engine.max_context}; shorten the input"
        )
    prefix_len = _common_prefix_length(ids)
    with engine._lock, torch.inference_mode():
        prefix_cache = _prefix_cache(engine, ids[0][:prefix_len])
        results = [
            _score_rows(
                engine,
                [x[prefix_len:] for x in ids[start : start + SCORING_ROWS]],
                prefix_cache,
                prefix_len,
                trie,
            )
            for start in range(0, len(ids), SCORING_ROWS)
        ]
    return torch.cat(results)


def _common_prefix_length(ids: Sequence[Sequence[int]]) -> int:
    """Longest shared prefix, leaving every prompt at least one token of its own."""
    limit = min(len(x) for x in ids) - 1
    n = 0
    while n < limit and all(x[n] == ids[0][n] for x in ids):
        n += 1
    return n


def _prefix_cache(model: TransformersEngine, prefix: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Key/value tensors of ``prefix``, kept on the model for the next call with the same prefix.

    The key includes the active adapter: the same tokens have other keys and values under it.
    """
    key = (model.active_adapter, tuple(prefix))
    cached = getattr(model, "_scoring_prefix", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    if not prefix:
        layers: list[tuple[torch.Tensor, torch.Tensor]] = []
    else:
        cache = DynamicCache()
        model.hf_model.get_decoder()(
            input_ids=torch.tensor([prefix], device=model.device),
            use_cache=True,
            **_cache_argument(model, cache),
        )
        layers = [(layer.keys, layer.values) for layer in cache.layers]  # type: ignore[union-attr,misc]
    model._scoring_prefix = (key, layers)
    return layers


def _cache_argument(model: TransformersEngine, cache: DynamicCache | None) -> dict[str, Any]:
    """The KV cache keyword of this transformers version (``cache``; ``past_key_values`` before)."""
    parameters = inspect.signature(model.hf_model.get_decoder().forward).parameters
    return {"cache" if "cache" in parameters else "past_key_values": cache}


def _score_rows(
    model: TransformersEngine,
    suffixes: list[list[int]],
    prefix_cache: list[tuple[torch.Tensor, torch.Tensor]],
    prefix_len: int,
    trie: TokenTrie,
) -> torch.Tensor:
    rows, n_nodes = len(suffixes), len(trie)
    q_len = max(len(s) for s in suffixes) + n_nodes
    device, dtype = model.device, model.dtype
    blocked = torch.finfo(dtype).min

    input_ids = torch.full((rows, q_len), model.tokenizer.pad_token_id, dtype=torch.long)
    positions = torch.zeros((rows, q_len), dtype=torch.long)
    mask = torch.full((rows, 1, q_len, prefix_len + q_len), blocked, dtype=dtype)
    mask[:, :, :, :prefix_len] = 0  # everything sees the shared prefix
    node_pos = torch.zeros((rows, n_nodes), dtype=torch.long)  # where each trie node sits
    last_pos = torch.zeros(rows, dtype=torch.long)  # last prompt token of each row

    trie_tokens = torch.tensor(trie.tokens)
    depths = torch.tensor(trie.depths)
    # ancestor[i, j]: node j is node i or one of its ancestors
    ancestor = torch.eye(n_nodes, dtype=torch.bool)
    for node, parent in enumerate(trie.parents):
        if parent >= 0:
            ancestor[node] |= ancestor[parent]
    causal = torch.tril(torch.ones(q_len, q_len, dtype=torch.bool))

    for row, suffix in enumerate(suffixes):
        s = len(suffix)
        input_ids[row, :s] = torch.tensor(suffix)
        input_ids[row, s : s + n_nodes] = trie_tokens
        positions[row, :s] = prefix_len + torch.arange(s)
        positions[row, s : s + n_nodes] = prefix_len + s + depths
        visible = torch.zeros(q_len, q_len, dtype=torch.bool)
        visible[:s, :s] = causal[:s, :s]
        visible[s : s + n_nodes, :s] = True
        visible[s : s + n_nodes, s : s + n_nodes] = ancestor
        mask[row, 0, :, prefix_len:].masked_fill_(visible, 0)
        node_pos[row] = s + torch.arange(n_nodes)
        last_pos[row] = s - 1

    cache = DynamicCache()
    for layer, (keys, values) in enumerate(prefix_cache):
        cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), layer)
    hidden = model.hf_model.get_decoder()(
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=bool(prefix_cache),
        **_cache_argument(model, cache if prefix_cache else None),
    ).last_hidden_state

    # The distribution before node n sits at its parent's position (the prompt's last for roots).
    parents = torch.tensor(trie.parents)
    before = torch.where(parents >= 0, node_pos[:, parents.clamp(min=0)], last_pos[:, None])
    needed = torch.unique(before)  # positions whose next-token distribution is used
    lookup = torch.full((q_len,), -1, dtype=torch.long)
    lookup[needed] = torch.arange(len(needed))
    logprobs = torch.log_softmax(
        model.hf_model.get_output_embeddings()(hidden[:, needed.to(device)]).float(), dim=-1
    ).cpu()

    row_index = torch.arange(rows)[:, None]
    node_logprob = logprobs[row_index, lookup[before], trie_tokens[None, :]]  # (rows, nodes)
    return torch.stack([node_logprob[:, list(path)].sum(dim=1) for path in trie.paths], dim=1)
