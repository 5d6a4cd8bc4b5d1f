"""Streaming partial outputs and the model call in LangChain callbacks (chains/streaming.py)."""

from __future__ import annotations

import asyncio
import time

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from pydantic import BaseModel, Field, field_validator

from castline.chains import Classify, StructuredChain
from castline.chains.streaming import complete_prefix
from castline.models import FakeEngine
from castline.schemas import OutputValidationError

PERSON_JSON = '{"name": "Ada", "age": 36, "city": "London"}'


class Person(BaseModel):
    name: str
    age: int = Field(ge=0)
    city: str


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("", None),
        ("{", {}),
        ('{"name": "Ad', {}),
        ('{"name": "Ada", "age": 3', {"name": "Ada"}),
        ('{"a": {"b": [1, 2]}, "c', {"a": {"b": [1, 2]}}),
        ('{"s": "a, b } ] \\" {", "t": 1', {"s": 'a, b } ] " {'}),
        ('[{"a": 1}, {"a"', [{"a": 1}]),
        ('{"a": 1}', None),  # closed: the final output follows
        ('"text', None),
    ],
)
def test_complete_prefix_keeps_only_members_written_in_full(text, value):
    assert complete_prefix(text) == value


def test_stream_yields_partial_models_whose_filled_fields_are_final():
    chain = StructuredChain(Person, model=FakeEngine(outputs=[PERSON_JSON]))
    items = list(chain.stream("x"))
    final = chain.invoke("x")
    assert items[-1] == final
    partials = items[:-1]
    assert [sorted(p.model_fields_set) for p in partials] == [["name"], ["age", "name"]]
    for partial in partials:
        assert isinstance(partial, Person)
        for name in partial.model_fields_set:
            assert getattr(partial, name) == getattr(final, name)
        assert all(
            getattr(partial, name) is None for name in set(Person.model_fields) - partial.model_fields_set
        )


def test_stream_of_a_list_yields_its_complete_items():
    output = '[{"name": "Ada", "age": 36, "city": "London"}, {"name": "Alan", "age": 41, "city": "Wilmslow"}]'
    chain = StructuredChain(list[Person], model=FakeEngine(outputs=[output]))
    items = list(chain.stream("x"))
    assert [len(x) for x in items] == [1, 2]
    assert items[0][0] == items[1][0] == Person(name="Ada", age=36, city="London")


def test_astream_matches_stream():
    chain = StructuredChain(Person, model=FakeEngine(outputs=[PERSON_JSON]))

    async def collect():
        return [x async for x in chain.astream("x")]

    assert asyncio.run(collect()) == list(chain.stream("x"))


class Capitalised(BaseModel):
    name: str

    @field_validator("name")
    @classmethod
    def capitalised(cls, value: str) -> str:
        if not value[:1].isupper():
            raise ValueError("a name starts with a capital")
        return value


def test_stream_raises_the_typed_error_invoke_raises():
    chain = StructuredChain(Capitalised, model=FakeEngine(outputs=['{"name": "ada"}']))
    with pytest.raises(OutputValidationError):
        list(chain.stream("x"))


def test_chains_without_partial_outputs_stream_the_final_one():
    chain = Classify(["spam", "ham"], model=FakeEngine(scores={"spam": -0.1, "ham": -3.0}))
    (only,) = list(chain.stream("win money"))
    assert only.label == "spam"


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.chain_runs: list[object] = []
        self.llm_parents: list[object] = []

    def on_chain_start(self, serialized, inputs, *, run_id, **kwargs):
        self.chain_runs.append(run_id)

    def on_llm_start(self, serialized, prompts, *, run_id, parent_run_id=None, **kwargs):
        self.events.append(("start", len(prompts)))
        self.llm_parents.append(parent_run_id)

    def on_llm_new_token(self, token, **kwargs):
        self.events.append(("token", token))

    def on_llm_end(self, response, **kwargs):
        self.events.append(("end", response.generations[0][0].text))


def test_the_model_call_reaches_langchain_callbacks_with_its_tokens():
    recorder = Recorder()
    chain = StructuredChain(Person, model=FakeEngine(outputs=[PERSON_JSON]))
    chain.invoke("x", config={"callbacks": [recorder]})
    kinds = [kind for kind, _ in recorder.events]
    assert kinds[0] == "start" and kinds[-1] == "end" and "token" in kinds
    assert "".join(str(v) for k, v in recorder.events if k == "token") == PERSON_JSON
    assert recorder.events[-1] == ("end", PERSON_JSON)
    assert recorder.llm_parents == [recorder.chain_runs[0]]  # the model call sits under the chain run


def test_a_batch_reports_one_llm_run_per_prompt():
    recorder = Recorder()
    chain = StructuredChain(Person, model=FakeEngine(outputs=[PERSON_JSON]))
    chain.batch(["x", "y", "z"], config={"callbacks": [recorder]})
    assert sum(1 for kind, _ in recorder.events if kind == "end") == 3


@pytest.mark.real_model
def test_partials_arrive_while_the_embedded_model_is_still_writing():
    from castline.models.loading import load_model

    class Trip(BaseModel):
        city: str
        country: str
        days: int

    chain = StructuredChain(Trip, model=load_model(), max_new_tokens=64)
    started = time.perf_counter()
    arrivals = [
        (time.perf_counter() - started, item) for item in chain.stream("Three days in Paris, France.")
    ]
    *partials, (done_at, final) = arrivals
    assert isinstance(final, Trip)
    assert partials, "no partial output before the final one"
    assert partials[0][0] < done_at  # the first field came before the model finished
    for _, partial in partials:
        for name in partial.model_fields_set:
            assert getattr(partial, name) == getattr(final, name)


def test_astream_events_show_the_model_call():
    chain = StructuredChain(Person, model=FakeEngine(outputs=[PERSON_JSON]))

    async def kinds():
        return [event["event"] async for event in chain.astream_events("x", version="v2")]

    seen = asyncio.run(kinds())
    assert seen[0] == "on_chain_start"
    assert {"on_llm_start", "on_llm_stream", "on_llm_end", "on_chain_end"} <= set(seen)
    assert seen.index("on_llm_start") < seen.index("on_llm_stream") < seen.index("on_llm_end")
