"""The engine seam: what a chain may ask of a model, declared without torch.

Chains never touch a tokenizer, a tensor or a model object. They hand an ``Engine`` declarative
requests and get plain records back:

- ``chat_prompt(messages)`` formats messages with the model's chat template into a ``Prompt``;
- ``token_offsets(text)`` / ``prompt_length(prompt)`` count and locate tokens (for windows and
  budgets);
- ``generate(requests)`` runs a batch of ``GenerationRequest`` (each with its own constraint,
  settings, budget and adapter) and returns one ``Generation`` -- or one typed error -- per request;
- ``score(prompts, continuations)`` returns the unconstrained log-probability of each given
  continuation after each prompt (label scoring); probabilities are normalised and calibrated by
  the chains, above the seam, so they mean the same on every engine;
- ``load_adapter(directory)`` makes a saved LoRA adapter available by name.

Constraints are declarative: an ``OutputSpec`` (regex / JSON schema / label set) or a
``SpanConstraint`` (mentions are exact substrings of a text, left to right). Each engine turns
them into what it can execute, and declares its ``capabilities``; a chain that needs one the
engine lacks fails when it is built (``Engine.require``), never by behaving differently.

Engines: ``castline.models.transformers`` (in-process, accelerate placement, training),
``castline.models.llamacpp`` (a GGUF through llama-cpp-python), ``castline.models.fake`` (no
model at all, for users' own tests).
"""

from __future__ import annotations

import enum
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from castline.prompts.templates import Message
from castline.schemas.errors import (
    CastlineError,
    EngineCapabilityError,
    InvalidInputError,
    RealModelBlockedError,
)
from castline.schemas.output_types import OutputSpec
from castline.schemas.settings import GenerationSettings


class Capability(str, enum.Enum):
    """What an engine can do; chains check the ones they need when they are built."""

    GRAMMAR = "grammar"  # generation constrained to a regex / JSON schema / label set
    SPANS = "spans"  # generation constrained to exact spans of the input
    SCORE = "score"  # unconstrained log-probs of given continuations (label probabilities)
    ADAPTERS = "adapters"  # LoRA adapters loaded from disk and chosen per request
    TRAINING = "training"  # training new LoRA adapters
    MERGE = "merge"  # a copy of the model with an adapter merged into its weights
    STREAMING = "streaming"  # calls each request's on_token as its tokens are chosen


@dataclass(frozen=True)
class Prompt:
    """A chat-formatted prompt.

    ``literal`` holds the character ranges of message contents. Engines tokenize those ranges
    as plain text, so user text that spells a control token (``<|im_end|>``) stays text and can
    never open a new turn.
    """

    text: str
    literal: tuple[tuple[int, int], ...] = ()

    def __str__(self) -> str:
        return self.text

    def pieces(self) -> list[tuple[str, bool]]:
        """``(text, is_literal)`` pieces in order, covering the whole prompt."""
        out, at = [], 0
        for start, end in self.literal:
            if start > at:
                out.append((self.text[at:start], False))
            if end > start:
                out.append((self.text[start:end], True))
            at = end
        if at < len(self.text):
            out.append((self.text[at:], False))
        return out


def format_with_literals(text: str, messages: Sequence[Message]) -> Prompt:
    """A ``Prompt`` for ``text`` (messages already formatted) marking each message's content literal.

    Contents are found in order; a chat template that rewrites a content (trims it) is matched on
    the trimmed text.
    """
    ranges, at = [], 0
    for message in messages:
        content = message["content"]
        for candidate in (content, content.strip()):
            found = text.find(candidate, at) if candidate else -1
            if found >= 0:
                ranges.append((found, found + len(candidate)))
                at = found + len(candidate)
                break
    return Prompt(text, tuple(ranges))


def plain_chat_text(messages: Sequence[Message]) -> str:
    """Messages as plain turns for a model without a chat template, the assistant's turn open."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def prompt_too_long(prompt_tokens: int, budget: int, context: int) -> InvalidInputError:
    """The per-item error for a prompt that leaves no room for its output."""
    return InvalidInputError(
        f"the prompt has {prompt_tokens} tokens and the output may need {budget} more, over the "
        f"model's context of {context}; shorten the input or lower max_new_tokens"
    )


@dataclass(frozen=True)
class SpanConstraint:
    """Output lines ``label:span`` (or one bare span when ``labels`` is None), spans copied from ``text``.

    ``ordered``: every label once, in the given order (schema fields), spans anywhere in the text;
    otherwise any number of lines, spans left to right. ``optional`` labels may have an empty span.
    """

    text: str
    labels: tuple[str, ...] | None = None
    ordered: bool = False
    optional: frozenset[str] = frozenset()
    max_span_tokens: int | None = None


Constraint = OutputSpec | SpanConstraint | None


@dataclass(frozen=True)
class GenerationRequest:
    """One output to generate.

    ``on_token``, where the engine has ``Capability.STREAMING``, is called with the bytes of each
    output token as it is chosen (end-of-turn excluded), from the thread that generates.
    """

    prompt: Prompt
    constraint: Constraint = None
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    max_new_tokens: int = 256
    adapter: str | None = None
    on_token: Callable[[bytes], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SpanMatch:
    """A span the decoder copied: ``text[start:end]``; ``start == end == -1`` for an empty optional."""

    start: int
    end: int
    label: str | None
    first_token: int  # token range of its output line, for its score
    last_token: int


@dataclass(frozen=True)
class Generation:
    """One generated output, exactly as decoded."""

    text: str
    token_ids: tuple[int, ...]
    complete: bool  # False when the budget cut the output off
    token_logprobs: tuple[float, ...] = ()  # of each token, under the constrained distribution
    spans: tuple[SpanMatch, ...] = ()


@dataclass(frozen=True)
class Continuation:
    """A candidate reply to score; ``end_of_turn`` appends the model's end-of-turn token."""

    text: str
    end_of_turn: bool = True


@dataclass(frozen=True)
class AdapterInfo:
    """A loaded adapter: where it came from and what its weights hash to."""

    name: str
    path: Path | None
    content_hash: str
    metadata: dict[str, Any]


class Engine(ABC):
    """A loaded model behind the seam. Subclasses declare ``engine_name`` and ``capabilities``."""

    engine_name: ClassVar[str]
    capabilities: frozenset[Capability]  # per class, or per instance where it depends on the server

    name: str  # the model's identity, recorded with adapters
    max_context: int

    def __init__(self) -> None:
        self.adapters: dict[str, AdapterInfo] = {}

    # -- capabilities --------------------------------------------------------------------------

    def require(self, capability: Capability, needed_by: str) -> None:
        """Raise ``EngineCapabilityError`` unless this engine has ``capability``."""
        if capability not in self.capabilities:
            have = sorted(c.value for c in self.capabilities)
            raise EngineCapabilityError(
                f"the {self.engine_name} engine cannot do {capability.value!r}, which {needed_by} needs "
                f"(it can do {have}); load the model with an engine that can",
                engine=self.engine_name,
                capability=capability.value,
            )

    # -- prompts and tokens --------------------------------------------------------------------

    @abstractmethod
    def chat_prompt(self, messages: Sequence[Message]) -> Prompt:
        """``messages`` formatted with the model's chat template, open for the assistant's turn."""

    @abstractmethod
    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character ``(start, end)`` of each token of ``text`` tokenized as plain text."""

    def count_tokens(self, text: str) -> int:
        return len(self.token_offsets(text))

    @abstractmethod
    def prompt_length(self, prompt: Prompt) -> int:
        """Tokens ``prompt`` takes in the context."""

    # -- the verbs -----------------------------------------------------------------------------

    def prepare(self, constraint: Constraint) -> None:  # noqa: B027 -- optional for engines
        """Compile ``constraint`` ahead of the first call (an unsupported one fails here)."""

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation | CastlineError]:
        """One result per request, in order; a request that cannot run is its typed error."""

    @abstractmethod
    def score(
        self, prompts: Sequence[Prompt], continuations: Sequence[Continuation], adapter: str | None = None
    ) -> list[list[float]]:
        """``[i][j]``: log P(continuation j | prompt i), unconstrained, summed over its tokens."""

    def load_adapter(self, directory: str | os.PathLike[str], name: str | None = None) -> AdapterInfo:
        """Load a saved castline adapter and return it; its ``name`` selects it in requests."""
        self.require(Capability.ADAPTERS, "loading an adapter")
        raise NotImplementedError  # engines with the capability override this

    def check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self.adapters:
            raise EngineCapabilityError(
                f"no adapter named {adapter!r} is loaded on this {self.engine_name} engine; "
                f"loaded: {sorted(self.adapters)}",
                engine=self.engine_name,
                capability=Capability.ADAPTERS.value,
            )


# -- keeping real models out of unit tests ---------------------------------------------------------

BLOCK_ENV = "CASTLINE_BLOCK_REAL_MODELS"
_blocked = 0


@contextmanager
def block_real_models() -> Iterator[None]:
    """Inside this block (or with ``$CASTLINE_BLOCK_REAL_MODELS=1``) loading a real model fails.

    Use it around unit tests that must run on ``FakeEngine`` only::

        with block_real_models():
            chain = Classify(["a", "b"], model=FakeEngine())
    """
    global _blocked
    _blocked += 1
    try:
        yield
    finally:
        _blocked -= 1


def check_real_models_allowed(what: str) -> None:
    """Raise ``RealModelBlockedError`` when real model loading is blocked."""
    if _blocked or os.environ.get(BLOCK_ENV, "") not in ("", "0"):
        raise RealModelBlockedError(
            f"loading {what} is blocked (block_real_models() or ${BLOCK_ENV} is set); pass "
            "model=FakeEngine() in unit tests"
        )
