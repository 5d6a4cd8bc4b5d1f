"""The llguidance backend: labels, regexes and JSON Schemas compiled directly over token bytes.

llguidance builds its lexer lazily and computes each token mask in tens of microseconds; its
JSON Schema compiler follows the schema (lengths in characters, numeric bounds, ``$ref``,
``anyOf``) and refuses keywords it cannot enforce instead of ignoring them. It never drops a way
on from a state where the output could end, so no end sentinel is needed.

The tokenizer llguidance needs is built from castline's ``TokenTable`` (the exact bytes of every
token), so the same code serves every engine and tokenizer family. Control tokens are marked
special (llguidance's ``0xFF`` prefix) and are never allowed, except end-of-turn where the output
is complete.

Compiles are bounded by llguidance's own work limits (lexer fuel, Earley items, lexer states) and,
on top, by ``$CASTLINE_COMPILE_SECONDS``: construction runs in a worker thread (it releases the
GIL) and a compile past the bound is refused with an ``OutputTypeError``.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

import llguidance
import numpy as np

from castline.models.grammars import compile_seconds, timed_out
from castline.schemas.errors import OutputTypeError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

    from castline.models.decoding import TokenTable
    from castline.schemas.output_types import OutputSpec

# JSON as castline writes it: at most one space between tokens (a small model likes "a": 1, and
# runs of whitespace would spend its budget), no line breaks.
_JSON_OPTIONS: JsonCompileOptions = {"whitespace_pattern": "[ ]?", "lenient": False}
# Keywords llguidance cannot enforce and would refuse the schema for (Pydantic writes uniqueItems
# for every set field). They are left out of the grammar only: castline validates every decoded
# value against the full schema, so a value breaking them is an OutputValidationError, never
# returned. Any other unsupported keyword refuses the output type with its name.
CHECKED_AFTER_DECODING = frozenset({"uniqueItems"})


class _TokenBytes:
    """What ``llguidance.TokenizerWrapper`` reads: token bytes, end-of-turn, special ids, a tokenizer.

    llguidance tokenizes text the grammar forces (the rest of a key once its start is unique) and
    allows only that tokenization there. The model's own tokenizer gives the tokens it would have
    chosen; where it cannot spell the bytes exactly (a partial character, a tokenizer that adds a
    leading space), a greedy longest match over the token bytes does.
    """

    def __init__(self, table: TokenTable) -> None:
        self._encode = table.encode
        self.eos_token_id = table.eos_id
        self.bos_token_id = None
        self.special_token_ids = sorted(table.special_ids)
        self.tokens = [
            piece if piece is not None and i not in table.special_ids else b"\xff<|control %d|>" % i
            for i, piece in enumerate(table.pieces)
        ]
        self._ids = {piece: i for i, piece in enumerate(self.tokens) if i not in table.special_ids}
        self._longest = max(map(len, self._ids), default=1)

    def __call__(self, data: bytes) -> list[int]:
        if self._encode is not None:
            try:
                ids = self._encode(data.decode("utf-8"))
            except UnicodeDecodeError:
                ids = []
            if ids and b"".join(self.tokens[t] for t in ids) == data:
                return ids
        return self._greedy(data)

    def _greedy(self, data: bytes) -> list[int]:
        out, i = [], 0
        while i < len(data):
            for n in range(min(self._longest, len(data) - i), 0, -1):
                token = self._ids.get(data[i : i + n])
                if token is not None:
                    out.append(token)
                    i += n
                    break
            else:
                i += 1  # a byte no token spells: nothing to force there
        return out


def tokenizer_of(table: TokenTable) -> llguidance.LLTokenizer:
    """llguidance's tokenizer for ``table`` (built once per vocabulary: ~0.15 s for 49k tokens)."""
    return table.backend_state(
        "llguidance", lambda: llguidance.LLTokenizer(llguidance.TokenizerWrapper(_TokenBytes(table)))
    )


def grammar_source(spec: OutputSpec) -> str:
    """llguidance's grammar for ``spec``: label literals, the user's regex, or the JSON Schema."""
    if spec.kind == "labels":
        # Lark string literals take JSON escapes, so any label text is spelled exactly.
        alternatives = " | ".join(json.dumps(name, ensure_ascii=False) for name in spec.labels)
        return llguidance.LLMatcher.grammar_from_lark(f"start: {alternatives}")
    if spec.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(spec.pattern)
    schema = _without(spec.json_schema or {}, CHECKED_AFTER_DECODING)
    return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)


_NAMED_SUBSCHEMAS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_VALUES = frozenset({"enum", "const", "default", "examples"})  # JSON values, not subschemas


def _without(node: Any, keywords: frozenset[str]) -> Any:
    """A copy of a schema without ``keywords`` in any subschema."""
    if isinstance(node, list):
        return [_without(v, keywords) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in keywords:
            continue
        if key in _VALUES:
            out[key] = value
        elif key in _NAMED_SUBSCHEMAS and isinstance(value, dict):
            out[key] = {name: _without(sub, keywords) for name, sub in value.items()}
        else:
            out[key] = _without(value, keywords)
    return out


class LLGuidanceGrammar:
    """An output type compiled by llguidance over one vocabulary; cursors are copies of it."""

    def __init__(self, spec: OutputSpec, table: TokenTable) -> None:
        self.table = table
        self.matcher = _compile_bounded(grammar_source(spec), tokenizer_of(table), compile_seconds())

    def cursor(self) -> LLGuidanceCursor:
        return LLGuidanceCursor(self)


def _compile_bounded(source: str, tokenizer: llguidance.LLTokenizer, seconds: float) -> llguidance.LLMatcher:
    """A matcher for ``source`` with its first mask computed (the lexer is built lazily), in time."""
    built: list[Any] = []

    def build() -> None:
        try:
            # log_level=0: a refused token would otherwise print the parser state to stderr.
            matcher = llguidance.LLMatcher(tokenizer, source, log_level=0)
            matcher.deep_copy().compute_bitmask()
            built.append(matcher)
        except Exception as exc:
            built.append(exc)

    worker = threading.Thread(target=build, name="castline-grammar-compile", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        # llguidance's own limits end the work soon after; the result is dropped.
        raise timed_out(seconds)
    result = built[0]
    if isinstance(result, Exception):
        raise OutputTypeError(f"cannot build a decoding constraint: {result}") from result
    if result.is_error():
        raise OutputTypeError(f"the output type is not supported by the grammar: {_first_line(result)}")
    return result


def _first_line(matcher: llguidance.LLMatcher) -> str:
    return matcher.get_error().strip().splitlines()[0][:300]


class LLGuidanceCursor:
    """Where one output is in an llguidance grammar."""

    def __init__(self, grammar: LLGuidanceGrammar) -> None:
        self.table = grammar.table
        self.matcher = grammar.matcher.deep_copy()
        self.done = False
        self.complete = False  # set when the output ends: whether it was complete there
        self.consumed = 0  # tokens advanced over, EOS included
        self._words = np.zeros((self.table.size + 31) // 32, dtype=np.int32)

    def mask_into(self, row: np.ndarray) -> None:
        """Set ``row[t]`` for every token allowed next (``row`` is zeroed by the caller).

        A matcher that hit one of llguidance's work limits mid-output allows nothing but the end:
        the text so far then fails validation, a typed error with the raw text, never a value.
        """
        eos = self.table.eos_id
        if self.done or self.matcher.is_error():
            row[eos] = True
            return
        self.matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        if self.matcher.is_error():
            row[eos] = True
            return
        bits = np.unpackbits(self._words.view(np.uint8), bitorder="little").astype(bool)
        n = min(len(row), self.table.size)
        row[:n] = bits[:n]

    def advance(self, token_id: int) -> None:
        if self.done:
            return
        self.consumed += 1
        if token_id == self.table.eos_id:
            self.done = True
            self.complete = self.can_end()
        self.matcher.consume_token(token_id)  # a refused token puts the matcher in its error state

    def can_end(self) -> bool:
        """Whether the output so far is complete (it may end here)."""
        if self.done:
            return self.complete
        return not self.matcher.is_error() and self.matcher.is_accepting()

    def spans(self) -> tuple[()]:
        return ()
