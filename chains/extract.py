"""Extraction: any Pydantic schema filled from a text, one record or a list of them.

    >>> class Receipt(BaseModel):
    ...     company: str = Field(description="the shop's name")
    ...     total: str = Field(description="amount paid, as printed")
    >>> Extract(Receipt).invoke("ABC HO TRADING\nNO.2 JALAN BAYU\nTOTAL: 31.00\nTHANK YOU")
    Receipt(company='ABC HO TRADING', total='31.00')

Field descriptions go to the model inside the JSON Schema. With ``many=True`` the output is a
list of records. Validators that decoding cannot enforce raise ``OutputValidationError`` with the
raw output, or are retried by sampling again when ``retries`` > 0.

With ``spans=True`` (flat schemas of ``str`` / ``str | None`` fields) every value is decoded
under the span grammar: it is copied from the input by construction, so a small model can
neither invent a value nor copy one from a few-shot example. ``Extract.spans_of(result)`` then
gives each field's character offsets.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, TypeVar, overload

from pydantic import BaseModel, ValidationError

from castline.chains.base import Output, token_budget
from castline.chains.structured import StructuredChain
from castline.models.protocol import Capability, Prompt, SpanConstraint
from castline.schemas.errors import (
    InvalidInputError,
    OutputTypeError,
    OutputValidationError,
    TruncatedOutputError,
)
from castline.schemas.settings import GenerationSettings

DEFAULT_INSTRUCTION = (
    "Extract the requested fields from the user's text. Copy values exactly as they appear; "
    "use null for a field the text does not give."
)


_M = TypeVar("_M", bound=BaseModel)


class Extract(StructuredChain[Output]):
    """Fill ``schema`` (or a list of it with ``many=True``) from the input text."""

    # Type checkers see Extract(Receipt) as an Extract[Receipt], with many=True an Extract[list[Receipt]].
    @overload
    def __init__(
        self: Extract[_M], schema: type[_M], *, many: Literal[False] = False, **options: Any
    ) -> None: ...
    @overload
    def __init__(
        self: Extract[list[_M]], schema: type[_M], *, many: Literal[True], **options: Any
    ) -> None: ...

    def __init__(
        self,
        schema: type[BaseModel],
        *,
        many: bool = False,
        spans: bool = False,
        max_field_tokens: int = 48,
        instruction: str | None = None,
        template: Any = None,
        **kwargs: Any,
    ) -> None:
        partials = {"instruction": instruction or DEFAULT_INSTRUCTION, **kwargs.pop("partial_variables", {})}
        self.schema = schema
        self.spans = spans
        self.max_field_tokens = max_field_tokens
        if spans:
            if many:
                raise OutputTypeError("spans=True extracts one record per text; use many=False")
            self.optional = frozenset(_string_fields(schema))
            partials["fields"] = [
                {"name": name, "description": field.description}
                for name, field in schema.model_fields.items()
            ]
        super().__init__(
            list[schema] if many else schema,  # type: ignore[valid-type]  # built at run time
            template=template or ("extract_spans" if spans else "structured"),
            partial_variables=partials,
            **kwargs,
        )
        if spans:
            self.model.require(Capability.SPANS, "Extract(spans=True)")
            self.partials["examples"] = [
                {"input": e["input"], "record": schema.model_validate_json(e["output"]).model_dump()}
                for e in self.partials["examples"]
            ]

    def training_pair(self, input: dict[str, Any], output: Any) -> tuple[Prompt, str]:
        if not self.spans:
            return super().training_pair(input, output)
        text = input["text"]
        record = self.schema.model_validate(output).model_dump()
        lines = []
        for key, value in record.items():
            if value is None:
                lines.append(f"{key}:")
                continue
            at = text.find(value)
            if at < 0:
                raise InvalidInputError(f"field {key}={value!r} is not copied from the text")
            lines.append(
                f"{key}:{' ' if text[at - 1 : at] == ' ' else ''}{value}"
            )  # as the decoder copies it
        return self.prompt_for(input), "\n".join(lines)

    def _run_batch(self, inputs: list[dict[str, Any]], settings: GenerationSettings) -> list[Any]:
        if not self.spans:
            return super()._run_batch(inputs, settings)
        not_text = [i for i, x in enumerate(inputs) if not isinstance(x.get("text"), str)]
        if not_text:  # span extraction copies from a text; anything else is refused per item
            texts = [x for i, x in enumerate(inputs) if i not in not_text]
            done = iter(self._run_batch(texts, settings) if texts else [])
            error = InvalidInputError("Extract(spans=True) needs 'text' to be a string")
            return [error if i in not_text else next(done) for i in range(len(inputs))]
        names = tuple(self.schema.model_fields)
        constraints = [
            SpanConstraint(
                x["text"], names, ordered=True, optional=self.optional, max_span_tokens=self.max_field_tokens
            )
            for x in inputs
        ]
        budget = token_budget(
            settings, 16 * len(names) + max(self.model.count_tokens(x["text"]) for x in inputs)
        )
        generations = self._generate([self.prompt_for(x) for x in inputs], constraints, settings, budget)
        results: list[Any] = []
        for x, generation in zip(inputs, generations, strict=True):
            if isinstance(generation, Exception):
                results.append(generation)
                continue
            if not generation.complete:
                results.append(TruncatedOutputError(generation.text, budget))
                continue
            values = {
                s.label: (x["text"][s.start : s.end] if s.start >= 0 else None) for s in generation.spans
            }
            try:
                results.append(self.schema.model_validate(values))
            except ValidationError as exc:
                results.append(
                    OutputValidationError(f"extracted values do not validate: {exc}", generation.text)
                )
        return results


def _string_fields(schema: type[BaseModel]) -> list[str]:
    """Names of the optional fields; raises unless every field is ``str`` or ``str | None``."""
    optional = []
    for name, field in schema.model_fields.items():
        annotation = field.annotation
        args = set(typing.get_args(annotation))
        if annotation is str:
            continue
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) and args == {str, type(None)}:
            optional.append(name)
            continue
        raise OutputTypeError(
            f"spans=True needs str or str | None fields; {schema.__name__}.{name} is {annotation}. "
            "Use spans=False for other types"
        )
    return optional


__all__ = ["Extract"]
