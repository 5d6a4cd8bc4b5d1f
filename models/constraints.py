"""Constrained decoding: an outlines_core index per output type, and a logits processor over it.

The index (the automaton over the model's vocabulary) is the expensive part, so a model builds it
once per regex and keeps it (``LocalModel.index_for``). Each generate call gets a fresh
``GuidedLogitsProcessor`` holding one cheap ``Guide`` cursor per batch row.

The mask is applied eagerly. outlines_core's own torch kernel is wrapped in ``torch.compile``,
which stalls the first constrained call in a process for ~9 s on CPU; unpacking the bitmask with
plain tensor ops costs tens of microseconds per token and nothing up front.
"""

from __future__ import annotations

import torch
from outlines_core import Guide, Index, Vocabulary
from transformers import LogitsProcessor, PreTrainedTokenizerBase

# SentencePiece marks a leading space with this character; byte-level BPE uses "Ġ", which
# convert_tokens_to_string already turns into a space.
_SPIECE_SPACE = "\u2581"


def build_vocabulary(tokenizer: PreTrainedTokenizerBase) -> Vocabulary:
    """The tokenizer's vocabulary as outlines_core needs it: decoded text -> token ids, no EOS."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no eos_token_id; constrained decoding needs one to stop")
    by_text: dict[str, list[int]] = {}
    for token, token_id in tokenizer.get_vocab().items():
        if token_id == eos_id:
            continue
        text = tokenizer.convert_tokens_to_string([token])
        if token.startswith(_SPIECE_SPACE) or token == "<0x20>":
            text = " " + text
        by_text.setdefault(text, []).append(token_id)
    return Vocabulary(eos_id, by_text)


def replay_is_complete(index: Index, token_ids: list[int]) -> bool:
    """Whether ``token_ids`` (generated without an EOS) already form a complete output."""
    guide = Guide(index)
    for token_id in token_ids:
        guide.advance(token_id=token_id, return_tokens=False)
    return guide.is_finished()


class GuidedLogitsProcessor(LogitsProcessor):
    """Masks every token that would leave the output type's regular language.

    One instance serves one batched ``generate`` call: row ``i`` of the batch follows its own
    ``Guide``. Rows that have finished keep receiving padding from ``generate``; they are left alone.
    """

    def __init__(self, index: Index, eos_token_id: int) -> None:
        self.index = index
        self.eos_token_id = eos_token_id
        self.guides: list[Guide] | None = None
        self.done: list[bool] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch, vocab = scores.shape
        if self.guides is None:
            self.guides = [Guide(self.index) for _ in range(batch)]
            self.done = [False] * batch
            self._words = torch.full((batch, (vocab + 31) // 32), 0, dtype=torch.int32)
            self._shifts = torch.arange(32, dtype=torch.int32)
        else:
            last = input_ids[:, -1].tolist()
            for row, guide in enumerate(self.guides):
                if self.done[row]:
                    continue
                if last[row] == self.eos_token_id:
                    self.done[row] = True
                else:
                    guide.advance(token_id=last[row], return_tokens=False)

        words = self._words
        words.zero_()
        for row, guide in enumerate(self.guides):
            if self.done[row]:
                words[row].fill_(-1)  # finished rows: anything goes, generate pads them anyway
            else:
                guide.write_mask_into(words[row].data_ptr(), words[row].numel(), 4)
        allowed = ((words.unsqueeze(-1) >> self._shifts) & 1).bool().view(batch, -1)[:, :vocab]
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))
