"""Output types: what a chain returns, and the language decoding is held to.

``output_spec(t)`` turns whatever a user passes as an output type into an ``OutputSpec``: the
language the decoder is constrained to, a parser from the decoded text to the typed value, and a
default token budget. Accepted types:

- a label set: ``Literal["a", "b"]``, an ``Enum`` subclass, or ``Labels([...])`` -- decoded as the
  bare label text, returned as the label (or the Enum member);
- ``Regex(pattern)`` -- returned as the matching string;
- anything Pydantic can describe with a JSON Schema: a ``BaseModel`` (nested models, lists,
  enums, Optional, Literal, constrained strings and numbers), ``list[Model]``, ``int``, ...
  -- decoded as compact JSON, returned validated;
- a JSON Schema as a ``dict`` -- decoded as compact JSON, returned as the JSON value, validated
  against the schema with ``jsonschema``.

An ``OutputSpec`` says *what* the output's language is (labels, a regex, a JSON Schema); the
grammar backends in ``castline.models.grammars`` compile it over a vocabulary. ``spec.regex`` is
the same language as one regular expression, built on demand (outlines_core needs it; llguidance
compiles labels and schemas directly).
"""

from __future__ import annotations

import enum
import json
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pydantic import TypeAdapter, ValidationError

from castline.schemas.errors import OutputTypeError, OutputValidationError

# One optional space between JSON tokens: enough for the model's habits, and it stops a small model
# from spending its budget on runs of whitespace.
JSON_WHITESPACE = r"[ ]?"


@dataclass(frozen=True)
class Regex:
    """Constrain the output to a regular expression; the chain returns the matching string.

    >>> Regex(r"\\d{4}-\\d{2}-\\d{2}")
    """

    pattern: str
    max_new_tokens: int = 64


@dataclass(frozen=True)
class Labels:
    """A set of labels, each optionally with a description shown to the model."""

    names: tuple[str, ...]
    descriptions: tuple[str | None, ...] = ()

    def __init__(self, names: Sequence[str], descriptions: Sequence[str | None] | None = None):
        names = tuple(names)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise OutputTypeError("labels must be a non-empty list of non-empty strings")
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise OutputTypeError(f"labels must be unique; repeated: {dupes}")
        descriptions = tuple(descriptions) if descriptions is not None else (None,) * len(names)
        if len(descriptions) != len(names):
            raise OutputTypeError("give one description per label (None where there is none)")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "descriptions", descriptions)

    def for_template(self) -> list[dict[str, str | None]]:
        """``[{"name": ..., "description": ...}]``, the form the shipped templates list labels in."""
        return [{"name": n, "description": d} for n, d in zip(self.names, self.descriptions, strict=True)]


@dataclass(frozen=True)
class OutputSpec:
    """How one output type is decoded and parsed."""

    python_type: Any
    kind: str  # "labels", "regex" or "json"
    parse: Callable[[str], Any]
    default_max_new_tokens: int
    labels: tuple[str, ...] = ()  # kind "labels"
    pattern: str = ""  # kind "regex": the user's pattern
    json_schema: dict[str, Any] | None = None  # kind "json": the schema the grammar follows

    @cached_property
    def regex(self) -> str:
        """The output's language as one regular expression (outlines_core's input, vLLM's regex)."""
        if self.kind == "labels":
            return "(" + "|".join(re.escape(n) for n in sorted(self.labels, key=len, reverse=True)) + ")"
        if self.kind == "regex":
            return self.pattern
        from outlines_core.json_schema import build_regex_from_schema

        try:
            return build_regex_from_schema(json.dumps(self.json_schema), JSON_WHITESPACE)
        except Exception as exc:  # outlines_core raises several types for unsupported keywords
            raise OutputTypeError(f"this JSON Schema has no regular-expression form: {exc}") from exc

    @cached_property
    def grammar_key(self) -> str:
        """The output's language as a stable string: what compiled grammars are cached under."""
        if self.kind == "labels":
            return "labels:" + json.dumps(self.labels, ensure_ascii=False)
        if self.kind == "regex":
            return "regex:" + self.pattern
        return "json:" + json.dumps(self.json_schema, sort_keys=True, ensure_ascii=False)


def labels_of(output_type: Any) -> Labels | None:
    """The label set an output type stands for, or None when it is not a label set."""
    if isinstance(output_type, Labels):
        return output_type
    if typing.get_origin(output_type) is typing.Literal:
        values = typing.get_args(output_type)
        if not all(isinstance(v, str) for v in values):
            raise OutputTypeError("a Literal label set must hold strings only")
        return Labels(values)
    if isinstance(output_type, type) and issubclass(output_type, enum.Enum):
        return Labels([str(m.value) for m in output_type])
    return None


def output_spec(output_type: Any) -> OutputSpec:
    """Build the decoding spec of ``output_type`` (see the module docstring for what is accepted)."""
    labels = labels_of(output_type)
    if labels is not None:
        return _label_spec(output_type, labels)
    if isinstance(output_type, Regex):
        return OutputSpec(str, "regex", lambda s: s, output_type.max_new_tokens, pattern=output_type.pattern)
    if isinstance(output_type, dict):
        return _json_schema_spec(output_type)
    if isinstance(output_type, str):
        raise OutputTypeError(
            f"output type {output_type!r} is a plain string; wrap a pattern as Regex({output_type!r}) "
            "or labels as Labels([...])"
        )
    return _json_spec(output_type)


def _label_spec(output_type: Any, labels: Labels) -> OutputSpec:
    by_name: dict[str, Any] = {n: n for n in labels.names}
    if isinstance(output_type, type) and issubclass(output_type, enum.Enum):
        by_name = {str(m.value): m for m in output_type}
    longest = max(len(n) for n in labels.names)
    return OutputSpec(
        python_type=output_type if not isinstance(output_type, Labels) else str,
        kind="labels",
        parse=lambda s: by_name[s],
        # A token holds at least one character, so the longest label bounds the budget.
        default_max_new_tokens=longest + 2,
        labels=labels.names,
    )


def _json_spec(output_type: Any) -> OutputSpec:
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(output_type)
        schema = strict_json_schema(adapter.json_schema())
    except Exception as exc:  # pydantic raises several types for unsupported annotations
        raise OutputTypeError(
            f"cannot constrain decoding to {output_type!r}: {exc}. Use a Pydantic model, a "
            "Literal/Enum label set, or Regex(pattern)"
        ) from exc

    def parse(text: str) -> Any:
        try:
            return adapter.validate_json(text)
        except ValidationError as exc:
            raise OutputValidationError(
                f"model output does not validate as {getattr(output_type, '__name__', output_type)}: "
                f"{exc.error_count()} error(s), first: {exc.errors()[0]['msg']} at "
                f"{'.'.join(str(p) for p in exc.errors()[0]['loc']) or 'top level'}",
                text,
                [dict(e) for e in exc.errors()],
            ) from exc

    return OutputSpec(output_type, "json", parse, _json_budget(schema), json_schema=schema)


def _json_schema_spec(schema: dict[str, Any]) -> OutputSpec:
    """A JSON Schema given as a dict: decoded as compact JSON, returned as the validated JSON value.

    The grammar forbids object keys the schema does not declare where the schema is silent about
    ``additionalProperties`` (otherwise a small model adds keys and runs on); set it explicitly to
    allow them. The output is validated against the schema exactly as given.
    """
    import jsonschema

    try:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise OutputTypeError(f"not a valid JSON Schema: {exc.message}") from exc
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    strict = strict_json_schema(schema)

    def parse(text: str) -> Any:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OutputValidationError(f"model output is not JSON: {exc}", text) from exc
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        if errors:
            where = ".".join(str(p) for p in errors[0].absolute_path) or "top level"
            raise OutputValidationError(
                f"model output does not validate against the JSON Schema: {len(errors)} error(s), "
                f"first: {errors[0].message} at {where}",
                text,
                [{"msg": e.message, "loc": list(e.absolute_path)} for e in errors],
            )
        return value

    return OutputSpec(Any, "json", parse, _json_budget(strict), json_schema=strict)


def strict_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` where every object forbids keys it does not declare.

    Without this a grammar built from a default Pydantic schema lets the model add keys and run on.
    """

    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: visit(v) for k, v in node.items()}
            if out.get("type") == "object" and "properties" in out:
                out.setdefault("additionalProperties", False)
            return out
        if isinstance(node, list):
            return [visit(v) for v in node]
        return node

    return visit(schema)


def _json_budget(schema: dict[str, Any]) -> int:
    """A default token budget for a JSON output: generous per declared field, capped.

    Counted fields include those of nested definitions, so a nested model gets more room.
    """
    fields = 0

    def visit(node: Any) -> None:
        nonlocal fields
        if isinstance(node, dict):
            fields += len(node.get("properties", {}))
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit(schema)
    return min(1024, 64 + 48 * max(fields, 1))
