"""What castline's constraints become in a request to the server, and back.

- A label set becomes ``structured_outputs.choice``, a JSON output ``structured_outputs.json``
  (compact: no free whitespace), a ``Regex`` ``structured_outputs.regex`` -- only when the pattern
  means the same to the server's regex engine (xgrammar or llguidance) as to castline's
  (outlines_core); otherwise the request is refused with a typed error that says what to write.
  The old ``guided_*`` fields are never sent: current vLLM ignores them silently.
- A ``SpanConstraint`` travels as JSON in ``vllm_xargs`` to castline's logits-processor plugin,
  which runs the same span rule as the in-process engines (``castline.models.server.vllm_spans``).
"""

from __future__ import annotations

import json
from typing import Any

from castline.models.protocol import Constraint, SpanConstraint
from castline.schemas.errors import OutputTypeError
from castline.schemas.output_types import OutputSpec

SPANS_XARG = "castline_spans"

# Escapes both engines read as the same literal character.
_LITERAL_ESCAPES = frozenset("\\.-[](){}*+?|^$/ntr\"' ")
# Escapes whose meaning differs (Unicode vs ASCII classes, word boundaries) or that one side lacks.
_ADVICE = {
    "d": "[0-9]",
    "D": "[^0-9]",
    "w": "[A-Za-z0-9_]",
    "W": "[^A-Za-z0-9_]",
    "s": "[ \\t\\n\\r]",
    "S": "[^ \\t\\n\\r]",
}


def portable_regex(pattern: str) -> str:
    """``pattern`` unchanged when the server's regex engine reads it as castline's does; else a typed error.

    Character classes like ``\\d`` match any Unicode digit for outlines_core and only ASCII digits
    for xgrammar, so sending them would make some values the output type allows impossible.
    Lookarounds, back-references, named groups and inline flags are not regular languages both
    sides support.
    """
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            escaped = pattern[i + 1 : i + 2]
            if escaped in _ADVICE:
                raise OutputTypeError(
                    f"the regex {pattern!r} uses \\{escaped}, which the server's regex engine reads "
                    f"differently from castline's (ASCII vs Unicode); write {_ADVICE[escaped]} for what "
                    "you mean"
                )
            if escaped not in _LITERAL_ESCAPES:
                raise OutputTypeError(
                    f"the regex {pattern!r} uses \\{escaped}, which castline does not send to a server "
                    "(its meaning differs between regex engines); write the characters or a class"
                )
            i += 2
            continue
        if char == "(" and pattern[i + 1 : i + 2] == "?" and pattern[i + 2 : i + 3] != ":":
            raise OutputTypeError(
                f"the regex {pattern!r} uses {pattern[i : i + 4]!r} (lookaround, named group or flag), "
                "which the server's regex engine does not read as castline's does; use (?:...) groups"
            )
        i += 1
    return pattern


def structured_outputs(spec: OutputSpec) -> dict[str, Any]:
    """The ``structured_outputs`` field of a request for ``spec``."""
    if spec.kind == "labels":
        return {"choice": list(spec.labels)}
    if spec.kind == "json":
        assert spec.json_schema is not None  # every JSON output type carries its schema
        return {"json": spec.json_schema, "disable_any_whitespace": True}
    return {"regex": portable_regex(spec.regex)}


def constraint_fields(constraint: Constraint) -> dict[str, Any]:
    """The request fields that carry ``constraint`` (none for free generation)."""
    if constraint is None:
        return {}
    if isinstance(constraint, SpanConstraint):
        return {"vllm_xargs": {SPANS_XARG: span_to_json(constraint)}}
    return {"structured_outputs": structured_outputs(constraint)}


def span_to_json(rule: SpanConstraint) -> str:
    return json.dumps(
        {
            "text": rule.text,
            "labels": list(rule.labels) if rule.labels is not None else None,
            "ordered": rule.ordered,
            "optional": sorted(rule.optional),
            "max_span_tokens": rule.max_span_tokens,
        },
        ensure_ascii=False,
    )


def span_from_json(raw: object) -> SpanConstraint:
    """The rule a request carries; ``ValueError`` naming castline when it is malformed."""
    try:
        data = json.loads(raw) if isinstance(raw, str) else None
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            raise ValueError("not an object with a text")
        labels = data.get("labels")
        return SpanConstraint(
            text=data["text"],
            labels=tuple(str(x) for x in labels) if labels is not None else None,
            ordered=bool(data.get("ordered", False)),
            optional=frozenset(str(x) for x in data.get("optional", [])),
            max_span_tokens=data.get("max_span_tokens"),
        )
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"castline span constraint in vllm_xargs[{SPANS_XARG!r}] is malformed: {exc}"
        ) from exc
