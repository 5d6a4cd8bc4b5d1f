"""The exact bytes of every token of a Hugging Face tokenizer (``TokenTable``).

Token strings are not token text. Byte-level BPE (GPT-2, Llama 3, SmolLM2) spells each byte as a
printable stand-in character ("Ġ" for a space, "Ã" for 0xC3); SentencePiece writes a space as
"▁" and bytes it has no piece for as ``<0xNN>``. Decoding one token at a time turns every partial
UTF-8 character into U+FFFD, so hundreds of distinct tokens would look the same to the grammar.
"""

from __future__ import annotations

import json
import re

from transformers import PreTrainedTokenizerBase

from castline.models.decoding import TokenTable

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
    return TokenTable(pieces, int(tokenizer.eos_token_id), special)
