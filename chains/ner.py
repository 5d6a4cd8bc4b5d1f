"""Named-entity recognition whose entities are exact spans of the input, with offsets.

    >>> ner = RecognizeEntities({"person": "a person's name", "location": "a place"})
    >>> ner.invoke("Ada Lovelace was born in London.").entities
    [Entity(text='London', label='location', start=25, end=31, score=0.726...)]

(the embedded 135M model misses the person zero-shot; examples or an adapter fix that)

Mentions are decoded under the span rule (``SpanConstraint``, applied by the engine): each is a substring of
the input by construction, in order of appearance, not overlapping (nested entities are not
represented; run one chain per type for those). ``text == input[start:end]`` always holds.
An entity's score is the geometric mean probability of the tokens of its line ("type: mention").

Inputs longer than ``window_tokens`` are split into overlapping windows and the results merged
with offsets into the original text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from castline.chains.base import Chain, token_budget
from castline.chains.classify import as_labels
from castline.chains.structured import default_model
from castline.chains.windows import merge_spans, split_windows
from castline.models.protocol import Capability, Engine, Prompt, SpanConstraint
from castline.prompts.templates import PromptTemplate, load_template
from castline.schemas.errors import InvalidInputError, TruncatedOutputError
from castline.schemas.results import Entities, Entity
from castline.schemas.settings import GenerationSettings

DEFAULT_INSTRUCTION = "Find the named entities of the listed types in the user's text."


def output_line(text: str, start: int, label: str, mention: str) -> str:
    """The line the span decoder writes for ``mention`` at ``start`` of ``text``: it copies the
    space before a mention along with it ("person: Ada" mid-text, "person:Ada" at the start).
    Training targets and few-shot demonstrations use it, so all three agree."""
    return f"{label}:{' ' if text[start - 1 : start] == ' ' else ''}{mention}"


class NERInput(BaseModel):
    text: str = Field(description="the text to find entities in")


class RecognizeEntities(Chain[Entities]):
    """Find entities of user-defined types; returns ``Entities`` with exact character offsets.

    Args:
        labels: entity types, as a list or a ``{type: description}`` dict.
        examples: few-shot ``{"text": ..., "entities": [{"text": ..., "label": ...}]}`` dicts.
        window_tokens: longest input handled in one pass; longer inputs are windowed.
    """

    def __init__(
        self,
        labels: Any,
        *,
        model: Engine | None = None,
        descriptions: Mapping[str, str] | None = None,
        examples: Sequence[Mapping[str, Any]] = (),
        instruction: str | None = None,
        template: str | Path | PromptTemplate = "ner",
        window_tokens: int = 512,
        window_overlap: int = 64,
        settings: GenerationSettings | None = None,
        **generation: Any,
    ) -> None:
        self.model = model or default_model()
        self.model.require(Capability.SPANS, type(self).__name__)
        self.labels = as_labels(labels, descriptions)
        for name in self.labels.names:
            if ":" in name or "\n" in name:
                raise InvalidInputError(f"entity type {name!r} may not contain ':' or a line break")
        self.settings = (settings or GenerationSettings()).merged(generation)
        self.input_model = NERInput
        self.template = load_template(template)
        self.partials = {
            "instruction": instruction or DEFAULT_INSTRUCTION,
            "labels": self.labels.for_template(),
            "examples": [self._check_example(dict(e), i) for i, e in enumerate(examples)],
        }
        self.template.check_variables(set(self.partials) | {"text"}, "a NER chain")
        self.window_tokens, self.window_overlap = window_tokens, window_overlap
        self.model.prepare(SpanConstraint("", tuple(self.labels.names)))

    def _check_example(self, example: dict[str, Any], index: int) -> dict[str, Any]:
        text = example.get("text")
        if not isinstance(text, str):
            raise InvalidInputError(f"example {index} needs a 'text' string")
        entities = [
            dict(e) if not isinstance(e, BaseModel) else e.model_dump() for e in example.get("entities", [])
        ]
        for e in entities:
            if (
                e.get("label") not in self.labels.names
                or not isinstance(e.get("text"), str)
                or e["text"] not in text
            ):
                raise InvalidInputError(
                    f"example {index}: entity {e} needs a label from {list(self.labels.names)} and "
                    "text that occurs in the example text"
                )
        # Demonstrations are written exactly as the span decoder writes its lines.
        cursor = 0
        for e in entities:
            at = text.find(e["text"], cursor)
            at = at if at >= 0 else text.find(e["text"])
            e["line"] = output_line(text, at, e["label"], e["text"])
            cursor = at + len(e["text"])
        return {"text": text, "entities": entities}

    def adapter_payload(self) -> dict[str, Any]:
        return {"task": type(self).__name__, "labels": list(self.labels.names)}

    def training_pair(self, input: dict[str, Any], output: Any) -> tuple[Prompt, str]:
        """Target: one "type: mention" line per entity in text order, as the span grammar decodes."""
        text = input["text"]
        raw = output.entities if isinstance(output, Entities) else output
        entities = [e if isinstance(e, Entity) else Entity(score=1.0, **dict(e)) for e in raw]
        cursor = 0
        for e in sorted(entities, key=lambda e: e.start):
            if text[e.start : e.end] != e.text:
                raise InvalidInputError(f"entity {e.text!r} is not at {e.start}:{e.end} of the text")
            if e.label not in self.labels.names:
                raise InvalidInputError(f"entity type {e.label!r} is not one of {list(self.labels.names)}")
            if e.start < cursor:
                raise InvalidInputError(f"entity {e.text!r} overlaps the one before it")
            cursor = e.end
        lines = [output_line(text, e.start, e.label, e.text) for e in sorted(entities, key=lambda e: e.start)]
        return self.prompt_for(text), "\n".join(lines)

    @property
    def OutputType(self) -> type[Entities]:
        return Entities

    def prompt_for(self, text: str) -> Prompt:
        return self.model.chat_prompt(self.template.render({**self.partials, "text": text}))

    def _run_batch(self, inputs: list[dict[str, Any]], settings: GenerationSettings) -> list[Any]:
        texts = [x["text"] for x in inputs]
        pieces = []  # (item, window start, window text)
        for item, text in enumerate(texts):
            for start, end in split_windows(text, self.model, self.window_tokens, self.window_overlap):
                pieces.append((item, start, text[start:end]))
        budget = token_budget(settings, 32 + 2 * max(self.model.count_tokens(p) for _, _, p in pieces))
        labels = tuple(self.labels.names)
        generations = self._generate(
            [self.prompt_for(p) for _, _, p in pieces],
            [SpanConstraint(p, labels) for _, _, p in pieces],
            settings,
            budget,
        )
        found: list[list[tuple[int, int, str, float]]] = [[] for _ in texts]
        failed: dict[int, Exception] = {}
        for (item, offset, _), generation in zip(pieces, generations, strict=True):
            if isinstance(generation, Exception):
                failed.setdefault(item, generation)
                continue
            if not generation.complete:
                failed.setdefault(item, TruncatedOutputError(generation.text, budget))
                continue
            for span in generation.spans:
                logprobs = generation.token_logprobs[span.first_token : span.last_token] or (0.0,)
                score = math.exp(sum(logprobs) / len(logprobs))
                found[item].append((offset + span.start, offset + span.end, span.label or "", score))
        results: list[Any] = []
        for item, text in enumerate(texts):
            if item in failed:
                results.append(failed[item])
                continue
            entities = [
                Entity(text=text[s:e], label=label, start=s, end=e, score=min(1.0, score))
                for s, e, label, score in merge_spans(found[item])
            ]
            results.append(Entities(text=text, entities=entities))
        return results
