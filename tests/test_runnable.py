"""The Runnable protocol, method by method, on a chain over the fake engine.

Each case calls one langchain-core Runnable method the way a LangChain user would and checks the
result is the chain's typed output (a label here). The parametrised ids are the conformance table.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import pytest
from langchain_core.runnables import RunnableLambda

from castline.chains import StructuredChain
from castline.models import FakeEngine

LABELS = ("a", "b")


def chain() -> StructuredChain:
    return StructuredChain(Literal["a", "b"], model=FakeEngine())


async def collect(iterator):
    return [x async for x in iterator]


CASES = {
    "invoke": lambda c: [c.invoke("x")],
    "ainvoke": lambda c: [asyncio.run(c.ainvoke("x"))],
    "batch": lambda c: c.batch(["x", "y"]),
    "abatch": lambda c: asyncio.run(c.abatch(["x", "y"])),
    "batch_as_completed": lambda c: [r for _, r in c.batch_as_completed(["x", "y"])],
    "abatch_as_completed": lambda c: [r for _, r in asyncio.run(collect(c.abatch_as_completed(["x", "y"])))],
    "stream": lambda c: list(c.stream("x")),
    "astream": lambda c: asyncio.run(collect(c.astream("x"))),
    "transform": lambda c: list(c.transform(iter(["x"]))),
    "atransform": lambda c: asyncio.run(collect(c.atransform(_aiter(["x"])))),
    "pipe (|)": lambda c: [(RunnableLambda(lambda s: s.lower()) | c | RunnableLambda(str)).invoke("X")],
    "bind": lambda c: [c.bind(max_new_tokens=8).invoke("x")],
    "with_config": lambda c: [c.with_config(run_name="labels", tags=["t"]).invoke("x")],
    "with_retry": lambda c: [c.with_retry(stop_after_attempt=2).invoke("x")],
    "with_fallbacks": lambda c: [c.with_fallbacks([chain()]).invoke("x")],
    "with_listeners": lambda c: [c.with_listeners(on_end=lambda run: None).invoke("x")],
    "assign": lambda c: [(RunnableLambda(lambda s: {"text": s}).assign(label=c)).invoke("x")["label"]],
    "pick": lambda c: [(RunnableLambda(lambda s: {"text": s}).assign(label=c).pick("label")).invoke("x")],
    "max_concurrency": lambda c: c.batch(["x", "y", "z"], config={"max_concurrency": 1}),
}


async def _aiter(items):
    for item in items:
        yield item


@pytest.mark.parametrize("method", list(CASES))
def test_runnable_method(method):
    results = CASES[method](chain())
    assert results and all(r in LABELS for r in results), results


def test_events_and_schemas():
    c = chain()
    events = asyncio.run(collect(c.astream_events("x", version="v2")))
    assert events[0]["event"] == "on_chain_start" and events[-1]["data"]["output"] in LABELS
    assert c.input_schema.model_json_schema()["required"] == ["text"]
    assert c.output_schema.model_json_schema()["enum"] == list(LABELS)
    assert len(c.get_graph().nodes) == 3  # input, the chain, output
