"""What the decoding grammar guarantees, JSON Schema keyword by keyword (the README's table).

For each keyword: a schema, an instance the ``jsonschema`` validator accepts, one it rejects, and
whether the grammar (llguidance, castline's default backend) already refuses the rejected one.
Where it does not ("checked after"), decoding may produce the instance and castline's
validation turns it into an ``OutputValidationError`` with the raw text -- never a returned value.
Every accepted instance must be decodable: the grammar is never stricter than the schema here.
The same table is checked for the outlines_core backend, which enforces fewer keywords.
"""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from castline.models import FakeEngine
from castline.models.grammars import Grammar
from castline.schemas import OutputTypeError, output_spec


def _obj(prop: dict) -> dict:
    return {"type": "object", "properties": {"v": prop}, "required": ["v"]}


# keyword, schema, accepted instance, rejected instance, enforced by the llguidance grammar
KEYWORDS = [
    ("type", _obj({"type": "integer"}), {"v": 3}, {"v": "3"}, True),
    ("enum", _obj({"enum": ["a", "b"]}), {"v": "a"}, {"v": "c"}, True),
    ("const", _obj({"const": "x"}), {"v": "x"}, {"v": "y"}, True),
    (
        "required",
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        {"a": 1},
        {},
        True,
    ),
    ("pattern", _obj({"type": "string", "pattern": "^[a-z]{2}$"}), {"v": "ab"}, {"v": "abc"}, True),
    ("minLength", _obj({"type": "string", "minLength": 2}), {"v": "ab"}, {"v": "a"}, True),
    ("maxLength", _obj({"type": "string", "maxLength": 2}), {"v": "ab"}, {"v": "abc"}, True),
    ("maxLength, non-ASCII", _obj({"type": "string", "maxLength": 2}), {"v": "éé"}, {"v": "ééé"}, True),
    (
        "format: date",
        _obj({"type": "string", "format": "date"}),
        {"v": "2024-01-31"},
        {"v": "31/01/2024"},
        True,
    ),
    (
        "minItems",
        _obj({"type": "array", "items": {"type": "integer"}, "minItems": 2}),
        {"v": [1, 2]},
        {"v": [1]},
        True,
    ),
    (
        "maxItems",
        _obj({"type": "array", "items": {"type": "integer"}, "maxItems": 1}),
        {"v": [1]},
        {"v": [1, 2]},
        True,
    ),
    ("minimum", _obj({"type": "integer", "minimum": 0}), {"v": 0}, {"v": -1}, True),
    ("maximum", _obj({"type": "integer", "maximum": 9}), {"v": 9}, {"v": 10}, True),
    ("exclusiveMinimum", _obj({"type": "number", "exclusiveMinimum": 0}), {"v": 1}, {"v": 0}, True),
    ("multipleOf", _obj({"type": "integer", "multipleOf": 5}), {"v": 10}, {"v": 7}, True),
    (
        "uniqueItems",
        _obj({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}),
        {"v": [1, 2]},
        {"v": [1, 1]},
        False,
    ),
    (
        "maxLength with pattern",
        _obj({"type": "string", "pattern": "^[a-z]+$", "maxLength": 3}),
        {"v": "abc"},
        {"v": "abcd"},
        True,
    ),
    ("format: email", _obj({"type": "string", "format": "email"}), {"v": "a@b.co"}, {"v": "ab"}, True),
    (
        "exclusiveMaximum, number",
        _obj({"type": "number", "exclusiveMaximum": 1.5}),
        {"v": 1.4},
        {"v": 1.5},
        True,
    ),
    ("multipleOf, number", _obj({"type": "number", "multipleOf": 0.5}), {"v": 1.5}, {"v": 1.2}, True),
    (
        "minProperties",
        {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 1},
        {"a": 1},
        {},
        True,
    ),
    (
        "maxProperties",
        {"type": "object", "additionalProperties": {"type": "integer"}, "maxProperties": 1},
        {"a": 1},
        {"a": 1, "b": 2},
        True,
    ),
    (
        "prefixItems",
        _obj({"type": "array", "prefixItems": [{"type": "integer"}], "items": {"type": "string"}}),
        {"v": [1, "a"]},
        {"v": ["a"]},
        True,
    ),
    (
        "patternProperties",
        {"type": "object", "patternProperties": {"^x": {"type": "integer"}}, "additionalProperties": False},
        {"x1": 1},
        {"y": 1},
        True,
    ),
    (
        "additionalProperties: false",
        {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
        {"a": 1},
        {"a": 1, "b": 2},
        True,
    ),
]


# Keywords llguidance refuses: an output type using them is an OutputTypeError when the chain is
# built (never a grammar that silently ignores them).
REFUSED = {
    "not": _obj({"not": {"type": "string"}}),
    "contains": _obj({"type": "array", "contains": {"type": "integer"}}),
    "if/then": _obj({"if": {"type": "integer"}, "then": {"minimum": 0}}),
    "dependentRequired": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "dependentRequired": {"a": ["b"]},
    },
}

# The outlines_core backend leaves more to validation after decoding, and gets two rows wrong.
OUTLINES_CORE_CHECKED_AFTER = {
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum, number",
    "multipleOf",
    "multipleOf, number",
    "maxProperties",
    "uniqueItems",
}
OUTLINES_CORE_WRONG = {"prefixItems": "refuses the valid instance", "patternProperties": "unsupported"}


def _decodable(grammar: Grammar, instance: object) -> bool:
    """Whether the grammar lets the decoder write ``instance`` as compact JSON and then stop."""
    table = grammar.table
    cursor = grammar.cursor()
    row = np.zeros(table.size, dtype=bool)
    for byte in [*json.dumps(instance, separators=(",", ":"), ensure_ascii=False).encode(), table.eos_id]:
        row[:] = False
        cursor.mask_into(row)
        if not row[byte]:
            return False
        cursor.advance(byte)
    return True


@pytest.mark.parametrize("backend", ["llguidance", "outlines_core"])
@pytest.mark.parametrize(
    ("keyword", "schema", "good", "bad", "enforced"), KEYWORDS, ids=[k[0] for k in KEYWORDS]
)
def test_keyword_table(keyword, schema, good, bad, enforced, backend):
    if backend == "outlines_core":
        if keyword in OUTLINES_CORE_WRONG:
            pytest.skip(f"outlines_core: {OUTLINES_CORE_WRONG[keyword]}")
        enforced = keyword not in OUTLINES_CORE_CHECKED_AFTER
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    assert validator.is_valid(good) and not validator.is_valid(bad)
    engine = FakeEngine()
    engine.token_table.use_grammar_backend(backend)
    grammar = engine.token_table.grammar(output_spec(schema))
    assert _decodable(grammar, good), f"{keyword}: the grammar refuses a valid instance"
    assert _decodable(grammar, bad) != enforced, f"{keyword}: the table says enforced={enforced}"
    if not enforced:  # decodable, so validation after decoding is what refuses it
        with pytest.raises(Exception, match="validate"):
            output_spec(schema).parse(json.dumps(bad, separators=(",", ":")))


@pytest.mark.parametrize("keyword", sorted(REFUSED))
def test_keywords_the_grammar_cannot_enforce_refuse_the_output_type(keyword):
    with pytest.raises(OutputTypeError, match="not supported by the grammar"):
        FakeEngine().token_table.grammar(output_spec(REFUSED[keyword]))
