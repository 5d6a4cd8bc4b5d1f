"""The embedded SmolLM2-135M-Instruct through the chains: typed, valid, consistent."""

from __future__ import annotations

import enum
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from castline.chains import StructuredChain
from castline.schemas import Regex

pytestmark = pytest.mark.real_model


class Priority(enum.Enum):
    LOW = "low"
    HIGH = "high"


class Contact(BaseModel):
    name: str = Field(description="full name of the person")
    age: int | None = Field(description="age in years, null if not given")
    city: str | None = Field(description="city the person lives in, null if not given")
    priority: Priority


SENTENCES = [
    "Anna Schmidt, 31, from Berlin, needs help urgently.",
    "Call back Tom when you can; he is 45 and lives in Leeds.",
    "Maria from Porto asked about her order.",
    "Urgent: Kofi Mensah (age 28) cannot log in.",
]


def test_pydantic_schema_gives_valid_objects(real_model):
    chain = StructuredChain(Contact, model=real_model)
    for contact in chain.batch(SENTENCES):
        assert isinstance(contact, Contact)
        assert contact.name.strip()


def test_label_set_gives_a_label(real_model):
    chain = StructuredChain(
        Literal["positive", "negative"],
        model=real_model,
        partial_variables={"instruction": "Is the sentiment of the review positive or negative?"},
    )
    assert set(chain.batch(["Loved it, great food!", "Terrible, cold and slow."])) <= {"positive", "negative"}


def test_regex_gives_a_match(real_model):
    chain = StructuredChain(
        Regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"),
        model=real_model,
        partial_variables={"instruction": "Write the date mentioned in the text as YYYY-MM-DD."},
    )
    date = chain.invoke("The invoice was paid on 14 March 2023.")
    assert len(date) == 10 and date[4] == date[7] == "-"


def test_batch_equals_invoke_for_greedy_decoding(real_model):
    chain = StructuredChain(Contact, model=real_model)
    assert chain.batch(SENTENCES) == [chain.invoke(s) for s in SENTENCES]
