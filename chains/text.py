"""Chains that write free text about their input: ``Summarize`` and ``Translate``.

The output is one paragraph of at most a given number of words, held to that by the grammar
(words of up to 30 characters, single spaces, no line breaks; a summary also ends at a sentence's
end), so a small model that would run on has to stop instead. An output the token budget still
cuts off is a ``TruncatedOutputError``, never a shortened result. Inputs longer than
``window_tokens`` are split (``chains/windows.py``); each chain says how its parts merge.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from castline.chains.base import Chain, Output, token_budget
from castline.chains.structured import default_model
from castline.models.protocol import Capability, Engine, Prompt
from castline.prompts.templates import PromptTemplate, load_template
from castline.schemas.errors import CastlineError, InvalidInputError, ModelOutputError, TruncatedOutputError
from castline.schemas.output_types import OutputSpec, Regex, output_spec
from castline.schemas.settings import GenerationSettings


class TextInput(BaseModel):
    text: str = Field(description="the text to work on")


class TextChain(Chain[Output]):
    """Render the task's template around each part of the text and generate free text for it."""

    output_key: str  # the example field that holds the expected output ("summary", "translation")
    sentence_end: bool  # whether the output must end a sentence

    def max_words_for(self, text: str) -> int:
        """The most words the output for ``text`` may have."""
        raise NotImplementedError

    def __init__(
        self,
        *,
        model: Engine | None,
        template: str | Path | PromptTemplate,
        partials: Mapping[str, Any],
        examples: Sequence[Mapping[str, Any]],
        window_tokens: int,
        settings: GenerationSettings | None,
        generation: Mapping[str, Any],
    ) -> None:
        self.model = model or default_model()
        self.model.require(Capability.GRAMMAR, type(self).__name__)
        self.settings = (settings or GenerationSettings()).merged(dict(generation))
        self.input_model = TextInput
        self.template = load_template(template)
        self.partials = {
            **partials,
            "examples": [self._check_example(dict(e), i) for i, e in enumerate(examples)],
        }
        self.template.check_variables(set(self.partials) | {"text"}, f"a {type(self).__name__} chain")
        if window_tokens < 16:
            raise InvalidInputError(f"window_tokens must be at least 16, not {window_tokens}")
        self.window_tokens = window_tokens

    def _check_example(self, example: dict[str, Any], index: int) -> dict[str, Any]:
        if not isinstance(example.get("text"), str) or not isinstance(example.get(self.output_key), str):
            raise InvalidInputError(f"example {index} needs a 'text' and a '{self.output_key}' string")
        return example

    def prompt_for(self, text: str) -> Prompt:
        return self.model.chat_prompt(self.template.render({**self.partials, "text": text}))

    def training_pair(self, input: Any, output: Any) -> tuple[Prompt, str]:
        """The prompt and the target; a target the grammar could never produce is refused."""
        text = input["text"] if isinstance(input, Mapping) else input
        written = getattr(output, self.output_key, output)
        if not isinstance(text, str) or not isinstance(written, str) or not written.strip():
            raise InvalidInputError(f"a training pair needs a text and a non-empty {self.output_key}")
        written = written.strip()
        limit = self.max_words_for(text)
        if re.fullmatch(_paragraph(limit, self.sentence_end).pattern, written) is None:
            raise InvalidInputError(
                f"this {self.output_key} cannot be written by {type(self).__name__}, which writes one "
                f"line of at most {limit} words{' ending a sentence' if self.sentence_end else ''} "
                f"(it has {len(written.split())} words): {written[:80]!r}"
            )
        return self.prompt_for(text), written

    def _write(self, texts: list[str], settings: GenerationSettings) -> list[str | CastlineError]:
        """The model's text for each of ``texts`` (one generation each, held to the paragraph the
        chain writes), or the error in its place."""
        if not texts:
            return []
        limits = [self.max_words_for(t) for t in texts]
        specs = [_paragraph(n, self.sentence_end) for n in limits]
        # Words are at most 31 characters, so a token budget of 3 per word is rarely reached.
        budget = token_budget(settings, 3 * max(limits) + 16)
        generations = self._generate([self.prompt_for(t) for t in texts], list(specs), settings, budget)
        written: list[str | CastlineError] = []
        for generation in generations:
            if isinstance(generation, CastlineError):
                written.append(generation)
            elif not generation.complete:
                written.append(TruncatedOutputError(generation.text, budget))
            elif not generation.text.strip():
                written.append(ModelOutputError("the model wrote nothing", generation.text))
            else:
                written.append(generation.text.strip())
        return written


# Every character Python counts as whitespace (str.split splits on them): none may sit inside a
# word, so the words the grammar counts are the words a reader counts. They are all below U+3001.
_SPACES = "".join(ch for ch in map(chr, range(0x3001)) if ch.isspace())
# A comma or semicolon only ends a word: a model forced to stop cannot glue words together with them.
_WORD = f"[^{_SPACES},;]{{1,30}}[,;]?"
_SENTENCE_END = "[.!?。！？]"


@lru_cache(maxsize=256)
def _paragraph(max_words: int, sentence_end: bool) -> OutputSpec:
    """Up to ``max_words`` words on one line; with ``sentence_end`` the last one ends a sentence."""
    last = f"[^{_SPACES},;]{{0,30}}{_SENTENCE_END}" if sentence_end else _WORD
    return output_spec(Regex(f"(?:{_WORD} ){{0,{max(0, max_words - 1)}}}{last}"))
