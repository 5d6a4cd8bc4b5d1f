"""A Hugging Face tokenizer behind the seam's text verbs, without torch.

``HFTokenizerText`` gives an engine that holds a ``tokenizer`` the seam's prompt and token verbs
(chat template, literal user text, offsets, the ``TokenTable``). The in-process transformers
engine uses it, and so does the server engine, which must count and place tokens exactly as the
server will.

The exact bytes of every token (``token_table``):

Token strings are not token text. Byte-level BPE (GPT-2, Llama 3, SmolLM2) spells each byte as a
printable stand-in character ("Ġ" for a space, "Ã" for 0xC3); SentencePiece writes a space as
"▁" and bytes it has no piece for as ``<0xNN>``. Decoding one token at a time turns every partial
UTF-8 character into U+FFFD, so hundreds of distinct tokens would look the same to the grammar.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import cached_property

from transformers import PreTrainedTokenizerBase

from castline.models.decoding import TokenTable
from castline.models.protocol import Constraint, Prompt, format_with_literals, plain_chat_text
from castline.prompts.templates import Message

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPIECE_SPACE = "\u2581"


def _byte_level_alphabet() -> dict[str, int]:
    """Stand-in character -> byte, as byte-level BPE spells bytes.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted to 256 and up,
    in byte order.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    shifted = [b for b in range(256) if b not in printable]
    alphabet = {chr(b): b for b in printable}
    alphabet.update({chr(256 + i): b for i, b in enumerate(shifted)})
    return alphabet


def _is_byte_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder")
    return '"ByteLevel"' in json.dumps(decoder)


def token_table(tokenizer: PreTrainedTokenizerBase) -> TokenTable:
    """Bytes of every token id; control tokens get None."""
    added = tokenizer.added_tokens_decoder
    special = {i for i, t in added.items() if t.special} | set(tokenizer.all_special_ids)
    size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    pieces: list[bytes | None] = [None] * size
    alphabet = _byte_level_alphabet() if _is_byte_level(tokenizer) else None
    for token, token_id in tokenizer.get_vocab().items():
        if token_id in special:
            continue
        if token_id in added:  # added tokens hold their text as is
            pieces[token_id] = added[token_id].content.encode()
            continue
        byte = _BYTE_TOKEN.fullmatch(token)
        if byte:
            pieces[token_id] = bytes([int(byte.group(1), 16)])
        elif alphabet is not None and all(ch in alphabet for ch in token):
            pieces[token_id] = bytes(alphabet[ch] for ch in token)
        else:
            pieces[token_id] = token.replace(_SPIECE_SPACE, " ").encode()

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids)

    return TokenTable(pieces, int(tokenizer.eos_token_id), special, encode=encode)


class HFTokenizerText:
    """The seam's prompt and token verbs over ``self.tokenizer``; mixed into engines."""

    tokenizer: PreTrainedTokenizerBase

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @cached_property
    def _added_texts(self) -> list[str]:
        """Texts the tokenizer turns into one added (often control) token wherever they appear."""
        return [t.content for t in self.tokenizer.added_tokens_decoder.values() if t.content]

    def chat_prompt(self, messages: Sequence[Message]) -> Prompt:
        if self.tokenizer.chat_template is None:
            text = plain_chat_text(messages)
        else:
            text = str(
                self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
            )
        return format_with_literals(text, messages)

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        encoded = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True
        )
        return [tuple(o) for o in encoded["offset_mapping"]]

    def encode_prompt(self, prompt: Prompt | str) -> list[int]:
        """Token ids of ``prompt``; its literal pieces never become control tokens."""
        if isinstance(prompt, str):
            prompt = Prompt(prompt)
        pieces = prompt.pieces()
        if not any(lit and self._spells_added_token(text) for text, lit in pieces):
            # The common case: one pass over the whole text, exactly as the model was trained.
            return list(self.tokenizer(prompt.text, add_special_tokens=False).input_ids)
        ids: list[int] = []
        for text, literal in pieces:
            ids += self.tokenizer(text, add_special_tokens=False, split_special_tokens=literal).input_ids
        return ids

    def _spells_added_token(self, text: str) -> bool:
        return any(token in text for token in self._added_texts)

    def prompt_length(self, prompt: Prompt) -> int:
        return len(self.encode_prompt(prompt))

    def encode_text(self, text: str) -> list[int]:
        """Token ids of plain ``text`` (a continuation or a training target)."""
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids)

    def continuation_ids(self, text: str, end_of_turn: bool) -> list[int]:
        """Tokens of a continuation to score, with the end-of-turn token when asked."""
        return [*self.encode_text(text), *([self.eos_id] if end_of_turn else [])]

    @cached_property
    def token_table(self) -> TokenTable:
        return token_table(self.tokenizer)

    def prepare(self, constraint: Constraint) -> None:
        self.token_table.prepare(constraint)
