"""Span-constrained decoding: generated mentions and answers are exact substrings of the input.

The output grammar is ``(LABEL ":" SPAN "\\n")* EOS`` for entity lists and ``SPAN EOS`` for an
answer, where LABEL is one of the given names and SPAN is any substring of the input text that
contains a non-space character and no line break. The grammar is enforced while decoding, token
by token, so a span cannot be fuzzy-matched or invented.

Entity lists are decoded left to right: each span must start at or after the end of the previous
one. That settles repeated mentions (the n-th "Paris" in the output is the n-th suitable "Paris"
in the text), guarantees progress (no loops on one mention), and means entities do not overlap
or nest; for nested types, run one chain per type.

Allowed tokens come from a character trie over the vocabulary: walking it along ``text[i:]``
yields every token that spells the text from position ``i``. Each input gets those lists once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

_END = -1  # key of the token ids that end at a trie node


class VocabularyTrie:
    """Character trie of every token's text (tokens that do not decode to clean text are left out)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.root: dict = {}
        self.texts: dict[int, str] = {}
        special = set(tokenizer.all_special_ids)
        for token, token_id in tokenizer.get_vocab().items():
            if token_id in special:
                continue
            text = tokenizer.convert_tokens_to_string([token])
            if not text or "\ufffd" in text:
                continue
            self.texts[token_id] = text
            node = self.root
            for ch in text:
                node = node.setdefault(ch, {})
            node.setdefault(_END, []).append(token_id)

    @property
    def newline_ids(self) -> list[int]:
        """Tokens that are exactly a line break (they end a "label: span" line)."""
        return [t for t, text in self.texts.items() if text == "\n"]

    def tokens_spelling(self, text: str, start: int, stop: int | None = None) -> list[tuple[int, int]]:
        """``(token_id, length)`` of every token equal to ``text[start:start+length]`` (within stop)."""
        stop = len(text) if stop is None else stop
        node, found, i = self.root, [], start
        while i < stop:
            node = node.get(text[i])
            if node is None:
                break
            i += 1
            found.extend((t, i - start) for t in node.get(_END, ()))
        return found


@dataclass
class SpanState:
    """Where one row of the batch is in the span grammar."""

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
        self.starts = list(range(0 if self.ordered else self.cursor, len(self.text)))

    def next_labels(self) -> tuple[str, ...]:
        """Labels that may start the next line."""
        if not self.ordered:
            return self.labels or ()
        assert self.labels is not None
        return self.labels[len(self.spans) : len(self.spans) + 1]

    def may_end(self) -> bool:
        return not self.ordered or len(self.spans) == len(self.labels or ())

    def span_text(self) -> str:
        """The span typed so far (all consistent starts spell the same text)."""
        return self.text[self.starts[0] : self.starts[0] + self.length] if self.starts else ""

    def close_span(self) -> None:
        """Record the typed span at its earliest possible start, without surrounding spaces."""
        if not self.length and self.label in self.optional:
            self.spans.append((-1, -1, self.label))  # an optional field left empty
            self.span_steps.append((self._line_start, self.steps))
            self.mode = "label"
            return
        if not self.starts or not self.length:
            return
        start = min(self.starts)
        end = start + self.length
        raw = self.text[start:end]
        # Leading spaces come with tokens like " Paris"; the entity is the text without them.
        start += len(raw) - len(raw.lstrip())
        end -= len(raw) - len(raw.rstrip())
        self.spans.append((start, end, self.label))
        self.span_steps.append((self._line_start, self.steps))
        self.cursor = end
        self.starts, self.length = [], 0


class SpanProcessor(LogitsProcessor):
    """Masks tokens that would leave the span grammar; one ``SpanState`` per batch row."""

    def __init__(
        self, trie: VocabularyTrie, states: Sequence[SpanState], eos_id: int, newline_ids: Sequence[int]
    ) -> None:
        self.trie = trie
        self.states = list(states)
        self.eos_id = eos_id
        self.newline_ids = set(newline_ids)
        self.started = False
        # per row: position -> tokens spelling the text from there (no line breaks inside spans)
        self._at: list[dict[int, list[tuple[int, int]]]] = [{} for _ in self.states]

    def finish(self, ended: Sequence[bool]) -> None:
        """Close the spans of rows whose output ended with EOS.

        ``generate`` does not call the processor after a row's last token, so the EOS that closes
        a span is only seen here; ``ended[i]`` says whether row ``i`` stopped on EOS.
        """
        for state, stopped in zip(self.states, ended, strict=True):
            if stopped and state.mode != "done":
                self._advance(state, self.eos_id)

    def _tokens_at(self, row: int, position: int) -> list[tuple[int, int]]:
        cache = self._at[row]
        if position not in cache:
            text = self.states[row].text
            stop = text.find("\n", position)
            cache[position] = self.trie.tokens_spelling(text, position, None if stop < 0 else stop)
        return cache[position]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.started:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                self._advance(self.states[row], token)
        self.started = True
        allowed = torch.zeros_like(scores, dtype=torch.bool)
        for row in range(len(self.states)):
            allowed[row, self._allowed(row)] = True
        return scores.masked_fill(~allowed, float("-inf"))

    def _allowed(self, row: int) -> list[int]:
        state = self.states[row]
        if state.mode == "done":
            return [self.eos_id]
        if state.mode == "label":
            ids = [self.eos_id] if state.may_end() else []  # a list may end at the start of any line
            for name in state.next_labels():
                target = f"{name}:"
                if target.startswith(state.typed) and target != state.typed:
                    ids += [t for t, _ in self.trie.tokens_spelling(target, len(state.typed))]
            return ids
        ids = []
        if state.max_span_tokens is None or state.span_tokens < state.max_span_tokens:
            for start in state.starts:
                ids += [t for t, _ in self._tokens_at(row, start + state.length)]
        empty_ok = state.length == 0 and state.label in state.optional
        if state.span_text().strip() or empty_ok:  # the span may end here: a line break or the end
            if state.labels is None:
                ids.append(self.eos_id)
            else:
                last = len(state.spans) + 1 == len(state.labels)
                ids += [self.eos_id] if state.may_end() or (state.ordered and last) else []
                ids += sorted(self.newline_ids) if not (state.ordered and last) else []
        return ids or [self.eos_id]

    def _advance(self, state: SpanState, token: int) -> None:
        if state.mode == "done":
            return
        if token == self.eos_id:
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
