"""Chains on the tiny random model: outputs are meaningless but must always fit the type."""

from __future__ import annotations

import asyncio
import enum
from typing import Annotated, Literal

import pytest
from langchain_core.prompts import PromptTemplate as LCPromptTemplate
from langchain_core.runnables import RunnableLambda
from pydantic import BaseModel, Field

from castline.chains import StructuredChain
from castline.models import FakeEngine
from castline.prompts import PromptTemplate
from castline.schemas import (
    InvalidInputError,
    OutputValidationError,
    Regex,
    TemplateError,
    TruncatedOutputError,
    UserError,
)

TEXTS = [f"sample input number {i}: {'lorem ipsum ' * (i % 4)}" for i in range(12)]


class Size(enum.Enum):
    SMALL = "small"
    LARGE = "large"


class Tag(BaseModel):
    name: Annotated[str, Field(pattern=r"^[a-z]{1,6}$")]
    weight: Literal[1, 2, 3]


class Record(BaseModel):
    """Bounded in every field, so a fixed token budget always suffices.

    Only constraints the decoder enforces are used: outlines_core turns a string pattern into
    the grammar, but not numeric bounds or a max_length beside a pattern (those are checked by
    Pydantic afterwards and surface as OutputValidationError).
    """

    title: Annotated[str, Field(pattern=r"^[A-Za-z ]{1,8}$", description="short title")]
    size: Size
    mood: Literal["calm", "angry"]
    score: Literal[-1, 0, 1]
    tags: Annotated[list[Tag], Field(max_length=2)]
    note: Annotated[str, Field(pattern=r"^[a-z]{1,5}$")] | None


OUTPUT_KINDS = {
    "pydantic": (Record, Record),
    "labels": (Literal["spam", "ham", "hamster"], str),
    "regex": (Regex(r"[0-9]{3}-[A-Z]{2}"), str),
}


@pytest.mark.parametrize("kind", OUTPUT_KINDS)
def test_random_weights_still_yield_valid_typed_outputs(tiny_model, kind):
    output_type, python_type = OUTPUT_KINDS[kind]
    chain = StructuredChain(output_type, model=tiny_model, max_new_tokens=400)
    results = chain.batch(TEXTS)
    assert len(results) == len(TEXTS)
    for result in results:
        assert isinstance(result, python_type)
        if kind == "labels":
            assert result in ("spam", "ham", "hamster")
        if kind == "regex":
            assert len(result) == 6 and result[3] == "-"
        if kind == "pydantic":
            Record.model_validate(result.model_dump())


def test_sampling_also_fits_the_type_and_seed_reproduces(tiny_model):
    chain = StructuredChain(Record, model=tiny_model, max_new_tokens=400, temperature=1.0, top_p=0.9)
    first = chain.batch(TEXTS[:4], seed=7)
    assert all(isinstance(r, Record) for r in first)
    assert chain.batch(TEXTS[:4], seed=7) == first


def test_batch_keeps_input_order_and_matches_invoke(tiny_model):
    chain = StructuredChain(Regex(r"[a-z]{1,8}"), model=tiny_model)
    # Different lengths force padding; greedy outputs must not depend on batch neighbours.
    batched = chain.batch(TEXTS)
    assert batched == [chain.invoke(t) for t in TEXTS]


def test_truncation_is_a_typed_error_with_raw_text_and_limit(tiny_model):
    chain = StructuredChain(Record, model=tiny_model)
    with pytest.raises(TruncatedOutputError) as info:
        chain.invoke("anything", max_new_tokens=3)
    assert info.value.max_new_tokens == 3
    assert info.value.raw.startswith("{")
    assert "raise max_new_tokens" in str(info.value)


def test_batch_can_return_errors_in_place(tiny_model):
    chain = StructuredChain(Record, model=tiny_model, max_new_tokens=3)
    results = chain.batch(["a", "b"], return_exceptions=True)
    assert all(isinstance(r, TruncatedOutputError) for r in results)


def test_validator_errors_surface_with_raw_output(tiny_model):
    class Strict(BaseModel):
        word: Annotated[str, Field(max_length=4, pattern=r"^[a-z]+$")]

        def model_post_init(self, _):
            raise ValueError("never valid")

    chain = StructuredChain(Strict, model=tiny_model, max_new_tokens=40)
    with pytest.raises(OutputValidationError) as info:
        chain.invoke("x")
    assert info.value.raw.startswith('{"word"') or info.value.raw.startswith('{ "word"')


def test_composes_with_runnable_lambda_and_langchain_prompt(tiny_model):
    chain = StructuredChain(Literal["spam", "ham"], model=tiny_model)
    via_lambda = RunnableLambda(lambda s: {"text": s.upper()}) | chain
    assert via_lambda.invoke("hello") in ("spam", "ham")
    via_prompt = LCPromptTemplate.from_template("Message: {msg}") | chain
    assert via_prompt.invoke({"msg": "win a prize"}) in ("spam", "ham")
    after = chain | RunnableLambda(lambda label: label == "spam")
    assert isinstance(after.invoke("x"), bool)


def test_async_invoke_and_batch(tiny_model):
    chain = StructuredChain(Regex(r"[a-z]{1,8}"), model=tiny_model)
    assert asyncio.run(chain.ainvoke(TEXTS[0])) == chain.invoke(TEXTS[0])
    assert asyncio.run(chain.abatch(TEXTS[:3])) == chain.batch(TEXTS[:3])


class CountingEngine(FakeEngine):
    """A fake that records the size of every generate call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def generate(self, requests):
        self.calls.append(len(requests))
        return super().generate(requests)


def test_concurrent_ainvoke_calls_share_one_model_call():
    engine = CountingEngine()
    chain = StructuredChain(Literal["a", "b"], model=engine)

    async def eight():
        return await asyncio.gather(*(chain.ainvoke(f"text {i}") for i in range(8)))

    assert all(r in ("a", "b") for r in asyncio.run(eight()))
    assert engine.calls == [8]

    async def one_bad():
        return await asyncio.gather(chain.ainvoke("fine"), chain.ainvoke(None), return_exceptions=True)

    good, bad = asyncio.run(one_bad())
    assert good in ("a", "b") and isinstance(bad, InvalidInputError)  # the bad call fails alone

    async def other_settings():
        return await asyncio.gather(
            chain.ainvoke("x", max_new_tokens=5), chain.ainvoke("y", max_new_tokens=6)
        )

    engine.calls.clear()
    asyncio.run(other_settings())
    assert engine.calls == [1, 1]  # different settings never share a call
    chain.coalesce_window = None
    engine.calls.clear()
    asyncio.run(eight())
    assert engine.calls == [1] * 8


def test_max_concurrency_bounds_the_inputs_of_one_model_call():
    engine = CountingEngine()
    chain = StructuredChain(Literal["a", "b"], model=engine)
    assert len(chain.batch([f"t{i}" for i in range(5)], config={"max_concurrency": 2})) == 5
    assert engine.calls == [2, 2, 1]


def test_bind_sets_per_call_settings(tiny_model):
    chain = StructuredChain(Record, model=tiny_model)
    with pytest.raises(TruncatedOutputError):
        chain.bind(max_new_tokens=2).invoke("x")
    with pytest.raises(UserError, match="unknown generation setting"):
        chain.invoke("x", max_tokens=2)


def test_template_variables_checked_when_chain_is_built(tiny_model):
    class Ticket(BaseModel):
        body: str

    with pytest.raises(TemplateError, match="text"):
        StructuredChain(Literal["a", "b"], model=tiny_model, input_type=Ticket)
    template = PromptTemplate.from_string('{% call message("user") %}{{ body }}{% endcall %}')
    chain = StructuredChain(Literal["a", "b"], model=tiny_model, input_type=Ticket, template=template)
    assert chain.invoke(Ticket(body="hi")) in ("a", "b")


def test_bad_inputs_are_typed_errors(tiny_model):
    chain = StructuredChain(Literal["a", "b"], model=tiny_model)
    with pytest.raises(InvalidInputError, match="text"):
        chain.invoke({"txt": "typo"})
    with pytest.raises(InvalidInputError):
        chain.invoke(42)


def test_input_longer_than_context_is_refused_not_truncated(tiny_model):
    chain = StructuredChain(Literal["a", "b"], model=tiny_model)
    with pytest.raises(InvalidInputError, match="context"):
        chain.invoke("word " * 3000)


def test_few_shot_examples_render_as_turns_in_decoder_format(tiny_model):
    chain = StructuredChain(
        Tag, model=tiny_model, examples=[({"text": "heavy apple"}, Tag(name="apple", weight=3))]
    )
    prompt = chain.prompt_for({"text": "light pear"})
    assert '{"name":"apple","weight":3}' in prompt.text
    assert prompt.text.index("heavy apple") < prompt.text.index("light pear")


def test_input_and_output_schemas_are_exposed(tiny_model):
    chain = StructuredChain(Record, model=tiny_model)
    assert chain.get_input_schema().model_json_schema()["required"] == ["text"]
    assert chain.OutputType is Record


def test_langchain_chat_prompt_fills_the_single_input_field():
    from langchain_core.prompts import ChatPromptTemplate

    from castline.models import FakeEngine

    fake = FakeEngine()
    prompt = ChatPromptTemplate.from_messages([("system", "Sort mail."), ("human", "{mail}")])
    chain = prompt | StructuredChain(Literal["spam", "ham"], model=fake)
    assert chain.invoke({"mail": "WIN A PRIZE"}) in ("spam", "ham")
    assert "WIN A PRIZE" in fake.requests[-1].prompt.text
