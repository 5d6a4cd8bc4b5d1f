import enum
import sys
from typing import Literal

import pytest
from pydantic import BaseModel, Field, field_validator

from castline.schemas import (
    GenerationSettings,
    Labels,
    OutputTypeError,
    OutputValidationError,
    Regex,
    UserError,
    output_spec,
)


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Item(BaseModel):
    name: str = Field(description="item name")
    qty: int


class Order(BaseModel):
    items: list[Item]
    note: str | None = None

    @field_validator("items")
    @classmethod
    def not_empty(cls, v):
        if not v:
            raise ValueError("an order needs at least one item")
        return v


def test_importing_schemas_does_not_import_torch():
    assert "castline.schemas" in sys.modules
    import subprocess

    code = "import sys, castline.schemas, castline.prompts; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("output_type", "kind", "labels"),
    [
        (Literal["yes", "no"], "labels", ("yes", "no")),
        (Color, "labels", ("red", "green")),
        (Labels(["a", "b"]), "labels", ("a", "b")),
        (Regex(r"\d+"), "regex", ()),
        (Order, "json", ()),
        (list[Item], "json", ()),
    ],
)
def test_output_spec_kinds(output_type, kind, labels):
    spec = output_spec(output_type)
    assert spec.kind == kind
    assert spec.labels == labels
    assert spec.default_max_new_tokens > 0


def test_enum_labels_parse_to_members():
    assert output_spec(Color).parse("green") is Color.GREEN


def test_prefix_labels_put_longest_first_so_both_stay_reachable():
    assert output_spec(Literal["card", "card_arrival"]).regex == "(card_arrival|card)"


def test_json_schema_forbids_extra_keys_everywhere():
    schema = output_spec(Order).json_schema
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["Item"]["additionalProperties"] is False


def test_validator_failure_is_typed_and_keeps_raw_text():
    spec = output_spec(Order)
    raw = '{"items":[],"note":null}'
    with pytest.raises(OutputValidationError) as info:
        spec.parse(raw)
    assert info.value.raw == raw
    assert "at least one item" in info.value.errors[0]["msg"]


class NotDescribable:
    pass


@pytest.mark.parametrize("bad", ["plain string", NotDescribable, object()])
def test_unsupported_output_types_fail_clearly(bad):
    with pytest.raises(OutputTypeError):
        output_spec(bad)


@pytest.mark.parametrize(("names", "fragment"), [([], "non-empty"), (["a", "a"], "repeated")])
def test_bad_label_sets(names, fragment):
    with pytest.raises(OutputTypeError, match=fragment):
        Labels(names)


def test_settings_merge_and_reject_unknown_names():
    base = GenerationSettings(max_new_tokens=10)
    assert base.merged({"temperature": 0.5}).max_new_tokens == 10
    with pytest.raises(UserError, match="max_tokens"):
        base.merged({"max_tokens": 5})


def test_public_names_resolve_and_match_all():
    import castline
    import castline.chains
    import castline.models
    import castline.prompts
    import castline.schemas

    for module in (castline.chains, castline.models, castline.prompts, castline.schemas):
        public = {
            n for n in vars(module) if not n.startswith("_") and not isinstance(getattr(module, n), type(sys))
        }
        lazy = set(getattr(module, "_LAZY", ()))  # engines load their backends on first access
        assert set(module.__all__) - lazy <= public
        assert all(hasattr(module, n) for n in lazy)
    for name in castline.__all__:
        assert getattr(castline, name) is not None
