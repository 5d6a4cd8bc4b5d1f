"""Decoding rules over any vocabulary: the regex/JSON grammar and the span rule, without torch.

In-process engines (transformers, llama.cpp) apply the same rules, so the same constraint gives
the same language on both. A rule is a *cursor* per output: ``mask_into(row)`` marks the tokens
allowed next in a boolean array over the vocabulary, ``advance(token)`` consumes the chosen one.

What a rule needs of a tokenizer is a ``TokenTable``: the exact bytes of every token (not its
decoded string: byte-level BPE and SentencePiece byte-fallback tokens hold parts of a UTF-8
character, which all decode to U+FFFD and would be indistinguishable), the end-of-turn id and the
control-token ids.

Grammar: the output type's language compiled by a grammar backend (``castline.models.grammars``:
llguidance by default, outlines_core selectable), cached per vocabulary.

Spans: ``(LABEL ":" SPAN "\\n")* EOS`` for entity lists, ``SPAN EOS`` for an answer, every SPAN a
substring of the input with a non-space character and no line break; see ``SpanState``.
"""

from __future__ import annotations

import hashlib
import threading
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

import numpy as np

from castline.models.grammars import Grammar, GrammarCursor, check_backend, compile_grammar, default_backend
from castline.models.protocol import SpanConstraint
from castline.schemas.output_types import OutputSpec

_T = TypeVar("_T")
GRAMMAR_CACHE = 64  # compiled grammars kept per vocabulary
_END = -1  # key of the token ids that end at a trie node


class TokenTable:
    """The bytes of every token id (None for control tokens), and the end-of-turn id.

    It also owns the grammars compiled over this vocabulary, by the backend ``grammar_backend``
    names (default: ``$CASTLINE_GRAMMAR``, else llguidance). ``encode`` is the model's own
    tokenizer for plain text, where there is one: a grammar that forces text (an object's next key)
    then offers the model the tokens it would have chosen itself.
    """

    def __init__(
        self,
        pieces: Sequence[bytes | None],
        eos_id: int,
        special_ids: Iterable[int] = (),
        grammar_backend: str | None = None,
        encode: Callable[[str], list[int]] | None = None,
    ) -> None:
        self.pieces = list(pieces)
        self.encode = encode
        self.eos_id = eos_id
        self.special_ids = frozenset(special_ids) | {eos_id}
        self.size = len(self.pieces)
        self.sentinel_id = self.size  # one past the last real token (outlines_core's end marker)
        self.grammar_backend = check_backend(grammar_backend or default_backend())
        self._grammars: dict[tuple[str, str], Grammar] = {}  # compiled once per type, for every engine
        self._backend_states: dict[str, Any] = {}
        self._lock = threading.Lock()

    def use_grammar_backend(self, name: str) -> None:
        """Compile later grammars with backend ``name`` ("llguidance" or "outlines_core")."""
        self.grammar_backend = check_backend(name)

    def grammar(self, spec: OutputSpec) -> Grammar:
        """The grammar of ``spec`` over this vocabulary, compiled once and cached.

        The cache keeps the ``GRAMMAR_CACHE`` most recently used grammars (an outlines_core index
        can take tens of megabytes), so a process that builds many output types does not grow
        without bound. Compiles run outside the lock: one slow type never holds up another.
        """
        key = (self.grammar_backend, spec.grammar_key)
        with self._lock:
            grammar = self._grammars.pop(key, None)
            if grammar is not None:
                self._grammars[key] = grammar  # most recently used last
                return grammar
        grammar = compile_grammar(spec, self, key[0])
        with self._lock:
            self._grammars[key] = grammar
            while len(self._grammars) > GRAMMAR_CACHE:
                self._grammars.pop(next(iter(self._grammars)))
        return grammar

    def backend_state(self, backend: str, build: Callable[[], _T]) -> _T:
        """What ``backend`` derives from this vocabulary once (its own tokenizer or vocabulary)."""
        with self._lock:
            if backend not in self._backend_states:
                self._backend_states[backend] = build()
            return self._backend_states[backend]

    def prepare(self, constraint: OutputSpec | SpanConstraint | None) -> None:
        """Build what ``constraint`` needs ahead of the first call (an unsupported one fails here)."""
        if isinstance(constraint, OutputSpec):
            self.grammar(constraint)
        elif isinstance(constraint, SpanConstraint):
            self.trie  # noqa: B018 -- built once, on first use it costs ~1 s

    def cursor(self, constraint: OutputSpec | SpanConstraint | None) -> Cursor | None:
        """A fresh cursor for one output under ``constraint`` (None: unconstrained)."""
        if isinstance(constraint, OutputSpec):
            return self.grammar(constraint).cursor()
        if isinstance(constraint, SpanConstraint):
            return SpanCursor(constraint, self)
        return None

    @cached_property
    def fingerprint(self) -> str:
        """A hash of every token's bytes and the end-of-turn id: the vocabulary's identity."""
        digest = hashlib.sha256(f"{self.eos_id}|{sorted(self.special_ids)}".encode())
        for piece in self.pieces:
            digest.update(b"\x00-" if piece is None else len(piece).to_bytes(2, "little") + piece)
        return digest.hexdigest()

    @cached_property
    def texts(self) -> dict[int, str]:
        """Tokens whose bytes are whole UTF-8 text, by id (what span decoding can copy)."""
        out = {}
        for token_id, piece in enumerate(self.pieces):
            if not piece or token_id in self.special_ids:
                continue
            try:
                out[token_id] = piece.decode("utf-8")
            except UnicodeDecodeError:
                continue
        return out

    @cached_property
    def newline_ids(self) -> list[int]:
        """Tokens that are exactly a line break (they end a "label:span" line)."""
        return sorted(t for t, text in self.texts.items() if text == "\n")

    @cached_property
    def trie(self) -> VocabularyTrie:
        return VocabularyTrie(self.texts)

    def decode(self, token_ids: Iterable[int]) -> str:
        """Text of ``token_ids`` from their bytes (control tokens left out)."""
        return b"".join(self.pieces[t] or b"" for t in token_ids if t < self.size).decode("utf-8", "replace")


# -- spans -----------------------------------------------------------------------------------------


class VocabularyTrie:
    """Character trie over token texts: walking it along ``text[i:]`` finds tokens spelling the text."""

    def __init__(self, texts: dict[int, str]) -> None:
        self.root: dict[Any, Any] = {}
        self.texts = texts
        for token_id, text in texts.items():
            node = self.root
            for ch in text:
                node = node.setdefault(ch, {})
            node.setdefault(_END, []).append(token_id)

    def tokens_spelling(self, text: str, start: int, stop: int | None = None) -> list[tuple[int, int]]:
        """``(token_id, length)`` of every token equal to ``text[start:start+length]`` (within stop)."""
        stop = len(text) if stop is None else stop
        node = self.root
        found: list[tuple[int, int]] = []
        i = start
        while i < stop:
            child = node.get(text[i])
            if child is None:
                break
            node = child
            i += 1
            found.extend((t, i - start) for t in node.get(_END, ()))
        return found


@dataclass
class SpanState:
    """Where one output is in the span grammar.

    Entity lists are decoded left to right: each span starts at or after the end of the previous
    one, which settles repeated mentions (the n-th "Paris" in the output is the n-th suitable one
    in the text), guarantees progress, and means spans do not overlap or nest.

    Spans start and end on word boundaries (``splits_word``): a small model otherwise stops inside
    a word and goes on in the middle of it ("Lon", "o", "n" for "London").
    """

    text: str
    labels: tuple[str, ...] | None  # None: a single answer span
    ordered: bool = False  # fields: every label once, in order, spans anywhere in the text
    optional: frozenset[str] = frozenset()  # ordered fields that may be left empty (None)
    max_span_tokens: int | None = None  # a span this long must end
    cursor: int = 0  # spans must start here or later
    mode: str = "label"  # "label", "span" or "done"
    typed: str = ""  # label text typed so far
    label: str = ""
    starts: list[int] = field(default_factory=list)  # span starts consistent with what is typed
    length: int = 0  # characters of the span typed so far
    span_tokens: int = 0  # tokens of the span typed so far
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # finished (start, end, label)
    steps: int = 0  # tokens consumed so far
    span_steps: list[tuple[int, int]] = field(default_factory=list)  # token range of each span's line
    _line_start: int = 0

    def __post_init__(self) -> None:
        if self.labels is None:
            self.open_span("")

    def open_span(self, label: str) -> None:
        self.mode, self.label, self.length, self.span_tokens = "span", label, 0, 0
        first = 0 if self.ordered else self.cursor
        self.starts = [i for i in range(first, len(self.text)) if not splits_word(self.text, i)]

    def next_labels(self) -> tuple[str, ...]:
        """Labels that may start the next line."""
        if not self.ordered:
            return self.labels or ()
        assert self.labels is not None
        return self.labels[len(self.spans) : len(self.spans) + 1]

    def may_end(self) -> bool:
        return not self.ordered or len(self.spans) == len(self.labels or ())

    def ending_starts(self) -> list[int]:
        """Consistent starts whose span, as typed so far, ends on a word boundary."""
        return [s for s in self.starts if not splits_word(self.text, s + self.length)]

    def has_content(self) -> bool:
        """A span must hold a letter or digit: spaces or punctuation alone are never a mention."""
        return any(ch.isalnum() for ch in self.span_text())

    def span_text(self) -> str:
        """The span typed so far (all consistent starts spell the same text)."""
        return self.text[self.starts[0] : self.starts[0] + self.length] if self.starts else ""

    def close_span(self) -> None:
        """Record the typed span at its earliest possible start, without surrounding spaces.

        A span forced to stop inside a word keeps the words before it; a span with no letter or
        digit left is dropped, never recorded as an empty or reversed range.
        """
        if not self.length and self.label in self.optional:
            self.spans.append((-1, -1, self.label))  # an optional field left empty
            self.span_steps.append((self._line_start, self.steps))
            self.mode = "label"
            return
        ending = self.ending_starts()
        if ending:
            start = min(ending)
            end = start + self.length
        elif self.starts:
            # Forced to stop inside a word (the span reached max_span_tokens): keep the words
            # typed so far, back to the last boundary.
            start = min(self.starts)
            end = start + self.length
            while end > start and splits_word(self.text, end):
                end -= 1
        else:
            end = start = 0
        raw = self.text[start:end]
        if not any(ch.isalnum() for ch in raw):
            self.starts, self.length = [], 0
            return
        # Leading spaces come with tokens like " Paris"; the entity is the text without them.
        start += len(raw) - len(raw.lstrip())
        end -= len(raw) - len(raw.rstrip())
        self.spans.append((start, end, self.label))
        self.span_steps.append((self._line_start, self.steps))
        self.cursor = end
        self.starts, self.length = [], 0


def _char_class(ch: str) -> str:
    """ "letter", "digit", or "" for characters words are not made of (or that are words alone)."""
    if unicodedata.east_asian_width(ch) in ("W", "F"):
        return ""  # CJK text has no spaces: any character boundary may end a word
    if ch.isalpha() or unicodedata.category(ch).startswith("M"):
        return "letter"
    return "digit" if ch.isdigit() else ""


def splits_word(text: str, i: int) -> bool:
    """Whether position ``i`` falls inside a run of letters or a run of digits ("Lon|don", "20|24").

    A letter next to a digit is a boundary, so "31.00" can be copied out of "RM31.00".
    """
    if i <= 0 or i >= len(text):
        return False
    left = _char_class(text[i - 1])
    return bool(left) and left == _char_class(text[i])


class SpanCursor:
    """Where one output is in the span grammar, over a vocabulary's ``TokenTable``."""

    def __init__(self, rule: SpanConstraint, table: TokenTable) -> None:
        self.table = table
        self.trie = table.trie
        self.newline_ids = set(table.newline_ids)
        self.state = SpanState(rule.text, rule.labels, rule.ordered, rule.optional, rule.max_span_tokens)
        self._at: dict[int, list[tuple[int, int]]] = {}  # position -> tokens spelling the text from there
        self.consumed = 0  # tokens advanced over, EOS included

    def _tokens_at(self, position: int) -> list[tuple[int, int]]:
        if position not in self._at:
            text = self.state.text
            stop = text.find("\n", position)
            self._at[position] = self.trie.tokens_spelling(text, position, None if stop < 0 else stop)
        return self._at[position]

    def allowed(self) -> list[int]:
        state, eos = self.state, self.table.eos_id
        if state.mode == "done":
            return [eos]
        if state.mode == "label":
            ids = [eos] if state.may_end() else []  # a list may end at the start of any line
            for name in state.next_labels():
                target = f"{name}:"
                if target.startswith(state.typed) and target != state.typed:
                    ids += [t for t, _ in self.trie.tokens_spelling(target, len(state.typed))]
            return ids or [eos]
        ids = []
        if state.max_span_tokens is None or state.span_tokens < state.max_span_tokens:
            for start in state.starts:
                ids += [t for t, _ in self._tokens_at(start + state.length)]
        empty_ok = state.length == 0 and state.label in state.optional
        if (state.has_content() and state.ending_starts()) or empty_ok:  # it may end here
            if state.labels is None:
                ids.append(eos)
            else:
                last = len(state.spans) + 1 == len(state.labels)
                ids += [eos] if state.may_end() or (state.ordered and last) else []
                ids += sorted(self.newline_ids) if not (state.ordered and last) else []
        # Nothing can follow (the span reached text no token spells): end; close_span drops a
        # span that holds no non-space character.
        return ids or [eos]

    def mask_into(self, row: np.ndarray) -> None:
        row[self.allowed()] = True

    def advance(self, token: int) -> None:
        state = self.state
        if state.mode == "done":
            return
        self.consumed += 1
        if token == self.table.eos_id:
            if state.mode == "span":
                state.close_span()
            state.mode = "done"
            return
        state.steps += 1
        if state.mode == "label":
            if not state.typed:
                state._line_start = state.steps - 1
            state.typed += self.trie.texts[token]
            if state.typed in {f"{n}:" for n in state.next_labels()}:
                state.open_span(state.typed[:-1])
        elif token in self.newline_ids and (state.length or state.label in state.optional):
            state.close_span()
            state.mode, state.typed = "label", ""
        else:
            piece = self.trie.texts[token]
            state.starts = [s for s in state.starts if state.text.startswith(piece, s + state.length)]
            state.length += len(piece)
            state.span_tokens += 1

    @property
    def done(self) -> bool:
        return self.state.mode == "done"

    def can_end(self) -> bool:
        return self.done

    def spans(self) -> tuple[tuple[int, int, str, int, int], ...]:
        """Finished spans as ``(start, end, label, first_token, last_token)``."""
        return tuple(
            (s, e, label, first, last)
            for (s, e, label), (first, last) in zip(self.state.spans, self.state.span_steps, strict=True)
        )


Cursor = GrammarCursor | SpanCursor

__all__ = ["Cursor", "Grammar", "GrammarCursor", "SpanCursor", "SpanState", "TokenTable", "splits_word"]
