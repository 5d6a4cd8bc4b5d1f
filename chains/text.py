"""Chains that write free text about their input: ``Summarize`` and ``Translate``.

The output is the model's text, unconstrained, read to its end-of-turn: an output cut off by the
token budget is a ``TruncatedOutputError``, never a shortened result. Inputs longer than
``window_tokens`` are split (``chains/windows.py``); each chain says how its parts merge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from castline.chains.base import Chain, Output, token_budget
from castline.chains.structured import default_model
from castline.models.protocol import Engine, Prompt
from castline.prompts.templates import PromptTemplate, load_template
from castline.schemas.errors import CastlineError, InvalidInputError, ModelOutputError, TruncatedOutputError
from castline.schemas.settings import GenerationSettings


class TextInput(BaseModel):
    text: str = Field(description="the text to work on")


class TextChain(Chain[Output]):
    """Render the task's template around each part of the text and generate free text for it."""

    output_key: str  # the example field that holds the expected output ("summary", "translation")

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
        text = input["text"] if isinstance(input, Mapping) else input
        written = getattr(output, self.output_key, output)
        if not isinstance(text, str) or not isinstance(written, str) or not written.strip():
            raise InvalidInputError(f"a training pair needs a text and a non-empty {self.output_key}")
        return self.prompt_for(text), written.strip()

    def _write(
        self, texts: list[str], settings: GenerationSettings, budget: int
    ) -> list[str | CastlineError]:
        """The model's text for each of ``texts`` (one generation each), or the error in its place."""
        if not texts:
            return []
        budget = token_budget(settings, budget)
        generations = self._generate(
            [self.prompt_for(t) for t in texts], [None] * len(texts), settings, budget
        )
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
