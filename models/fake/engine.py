"""``FakeEngine``: an engine with no model, for testing code built on castline.

It needs no torch and no weights, answers at once, and records every request. Outputs always fit
the requested constraint:

- ``outputs``: scripted replies, a list used in turn (then repeated from the start) or a function
  of the request. A scripted reply that does not fit the constraint is an error in the test,
  raised as ``ValueError`` naming the reply.
- otherwise replies are generated from the constraint: a seeded random walk through the grammar
  (one token per byte), or, for span constraints, words of the input copied as spans.
- ``scores``: scripted log-probabilities of continuations, a ``{text: logprob}`` dict (missing
  texts get ``default_logprob``) or a function ``(prompt_text, continuation_text) -> logprob``.

One token is one byte of UTF-8 (characters for counting and offsets), so budgets and windows
behave like a real engine's at a small scale.

    >>> fake = FakeEngine(scores={"spam": -0.1, "ham": -2.5})
    >>> Classify(["spam", "ham"], model=fake, calibrate=False).invoke("WIN A PRIZE").label
    'spam'
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from castline.models.adapter_files import read_adapter_files
from castline.models.decoding import TokenTable
from castline.models.grammars import GrammarCursor
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
    format_with_literals,
    prompt_too_long,
)
from castline.prompts.templates import Message
from castline.schemas.errors import CastlineError
from castline.schemas.output_types import OutputSpec

EOS = 256
_STRUCTURAL = set(b'"}],')  # bytes that close JSON values: weighted up so walks end soon


class FakeEngine(Engine):
    """An engine without a model; see the module docstring."""

    engine_name: ClassVar[str] = "fake"
    capabilities: frozenset[Capability] = frozenset(
        {Capability.GRAMMAR, Capability.SPANS, Capability.SCORE, Capability.ADAPTERS, Capability.STREAMING}
    )

    def __init__(
        self,
        *,
        outputs: Sequence[str] | Callable[[GenerationRequest], str] | None = None,
        scores: Mapping[str, float] | Callable[[str, str], float] | None = None,
        default_logprob: float = -1.0,
        seed: int = 0,
        max_context: int = 100_000,
        name: str = "fake",
    ) -> None:
        super().__init__()
        self.name = name
        self.max_context = max_context
        self.outputs = outputs
        self.scores = scores
        self.default_logprob = default_logprob
        self.seed = seed
        self.requests: list[GenerationRequest] = []  # every generation request, in order
        self.scored: list[tuple[list[Prompt], list[Continuation], str | None]] = []  # every score call
        self._next_output = 0
        self.token_table = TokenTable([*(bytes([b]) for b in range(256)), None], EOS)

    def __repr__(self) -> str:
        return f"FakeEngine({self.name!r}, {len(self.requests)} requests)"

    # -- prompts and tokens --------------------------------------------------------------------

    def chat_prompt(self, messages: Sequence[Message]) -> Prompt:
        text = "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages) + "<assistant>\n"
        return format_with_literals(text, messages)

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return [(i, i + 1) for i in range(len(text))]

    def prompt_length(self, prompt: Prompt) -> int:
        return len(prompt.text)

    # -- generation ----------------------------------------------------------------------------

    def prepare(self, constraint: OutputSpec | SpanConstraint | None) -> None:
        self.token_table.prepare(constraint)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation | CastlineError]:
        results: list[Generation | CastlineError] = []
        for request in requests:
            self.check_adapter(request.adapter)
            self.requests.append(request)
            length = self.prompt_length(request.prompt)
            if length + request.max_new_tokens > self.max_context:
                results.append(prompt_too_long(length, request.max_new_tokens, self.max_context))
                continue
            scripted = self._scripted(request)
            if isinstance(request.constraint, SpanConstraint):
                results.append(self._spans(request, scripted))
            elif isinstance(request.constraint, OutputSpec):
                results.append(self._grammar_output(request, scripted))
            else:
                text = scripted if scripted is not None else "fake output"
                results.append(self._record(text, complete=True, budget=request.max_new_tokens))
            generation = results[-1]
            if request.on_token is not None and isinstance(generation, Generation):
                for byte in generation.token_ids:  # the fake's tokens are bytes
                    request.on_token(bytes([byte]))
        return results

    def _scripted(self, request: GenerationRequest) -> str | None:
        if self.outputs is None:
            return None
        if callable(self.outputs):
            return self.outputs(request)
        if not self.outputs:
            return None
        text = self.outputs[self._next_output % len(self.outputs)]
        self._next_output += 1
        return text

    def _record(
        self, text: str, complete: bool, budget: int, spans: tuple[SpanMatch, ...] = ()
    ) -> Generation:
        data = text.encode()
        if len(data) > budget:
            data, complete = data[:budget], False
            text = data.decode("utf-8", "ignore")
        return Generation(text, tuple(data), complete, tuple(-0.1 for _ in data), spans)

    def _grammar_output(self, request: GenerationRequest, scripted: str | None) -> Generation:
        assert isinstance(request.constraint, OutputSpec)
        grammar = self.token_table.grammar(request.constraint)
        if scripted is not None:
            cursor = grammar.cursor()
            row = np.zeros(EOS + 1, dtype=bool)
            for byte in [*scripted.encode(), EOS]:
                row[:] = False
                cursor.mask_into(row)
                if not row[byte]:
                    raise ValueError(
                        f"scripted output {scripted!r} does not fit the requested output type "
                        f"({request.constraint.grammar_key[:80]})"
                    )
                cursor.advance(byte)
            return self._record(scripted, True, request.max_new_tokens)
        seed = request.settings.seed if request.settings.seed is not None else self.seed
        rng = random.Random(seed + len(self.requests))
        for _ in range(50):  # walks that run past the budget are retried
            data = _walk(grammar.cursor(), rng, request.max_new_tokens)
            if data is not None:
                return self._record(data.decode(), True, request.max_new_tokens)
        return self._record("", False, request.max_new_tokens)

    def _spans(self, request: GenerationRequest, scripted: str | None) -> Generation:
        rule = request.constraint
        assert isinstance(rule, SpanConstraint)
        lines = _script_lines(scripted, rule) if scripted is not None else _word_lines(rule)
        spans: list[SpanMatch] = []
        out: list[str] = []
        cursor = 0
        for label, span in lines:
            if span is None:
                spans.append(SpanMatch(-1, -1, label, len("\n".join(out)), len("\n".join(out))))
                out.append(f"{label}:")
                continue
            at = rule.text.find(span, 0 if rule.ordered else cursor)
            if at < 0:
                raise ValueError(f"scripted span {span!r} is not in the input (after offset {cursor})")
            first = len("\n".join(out))
            out.append(span if label is None else f"{label}:{span}")
            spans.append(SpanMatch(at, at + len(span), label, first, len("\n".join(out))))
            cursor = at + len(span)
        return self._record("\n".join(out), True, request.max_new_tokens, tuple(spans))

    # -- scoring -------------------------------------------------------------------------------

    def score(
        self, prompts: Sequence[Prompt], continuations: Sequence[Continuation], adapter: str | None = None
    ) -> list[list[float]]:
        self.check_adapter(adapter)
        self.scored.append((list(prompts), list(continuations), adapter))
        return [[self._logprob(p.text, c.text) for c in continuations] for p in prompts]

    def _logprob(self, prompt: str, continuation: str) -> float:
        if callable(self.scores):
            return float(self.scores(prompt, continuation))
        if self.scores is not None:
            return float(self.scores.get(continuation, self.default_logprob))
        return self.default_logprob

    # -- adapters ------------------------------------------------------------------------------

    def load_adapter(self, directory: str | os.PathLike[str], name: str | None = None) -> AdapterInfo:
        """Record a saved adapter's metadata (the fake never applies weights)."""
        files = read_adapter_files(directory)
        info = AdapterInfo(name or files.default_name(), files.directory, files.content_hash, files.metadata)
        self.adapters[info.name] = info
        return info

    def add_adapter(self, name: str, metadata: Mapping[str, Any] | None = None) -> AdapterInfo:
        """Pretend an adapter ``name`` is loaded (for chains built with ``adapter=name``)."""
        info = AdapterInfo(name, None, name, dict(metadata or {}))
        self.adapters[name] = info
        return info


def _walk(cursor: GrammarCursor, rng: random.Random, budget: int) -> bytes | None:
    """A random path through the grammar that ends within ``budget`` bytes, or None."""
    out = bytearray()
    row = np.zeros(EOS + 1, dtype=bool)
    while len(out) <= budget:
        row[:] = False
        cursor.mask_into(row)
        allowed = np.flatnonzero(row).tolist()
        if EOS in allowed and (len(allowed) == 1 or rng.random() < 0.5):
            return bytes(out)
        choices = [t for t in allowed if t != EOS and t < 128] or [t for t in allowed if t != EOS]
        weights = [20.0 if t in _STRUCTURAL else 1.0 for t in choices]
        token = rng.choices(choices, weights)[0]
        cursor.advance(token)
        out.append(token)
    return None


def _word_lines(rule: SpanConstraint) -> list[tuple[str | None, str | None]]:
    """Words of the input as spans: one answer, one per ordered field, or capitalised words."""
    words = [m.group() for m in re.finditer(r"\w+", rule.text)]
    if rule.labels is None:
        return [(None, words[0] if words else rule.text.strip()[:1] or None)]
    if rule.ordered:
        return [(label, words[i % len(words)] if words else None) for i, label in enumerate(rule.labels)]
    capitalised = [w for w in words if w[:1].isupper()]
    return [(rule.labels[i % len(rule.labels)], w) for i, w in enumerate(capitalised)]


def _script_lines(scripted: str, rule: SpanConstraint) -> list[tuple[str | None, str | None]]:
    if rule.labels is None:
        return [(None, scripted)]
    lines: list[tuple[str | None, str | None]] = []
    for line in scripted.splitlines():
        label, sep, span = line.partition(":")
        if not sep or label not in rule.labels:
            raise ValueError(f"scripted line {line!r} must be 'label:span' with a label from {rule.labels}")
        lines.append((label, span.strip() or None))
    return lines
