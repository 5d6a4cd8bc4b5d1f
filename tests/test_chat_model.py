"""The LangChain chat model over castline engines: messages in, an AIMessage or a typed object out."""

from __future__ import annotations

from typing import Literal

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.prompts import ChatPromptTemplate
from pydantic import BaseModel

from castline.chains import CastlineChatModel
from castline.models import FakeEngine
from castline.schemas import InvalidInputError


class Person(BaseModel):
    name: str
    age: int


def test_a_reply_is_an_ai_message_with_usage_and_stop_sequences():
    chat = CastlineChatModel(engine=FakeEngine(outputs=["Hello there. Bye"]))
    reply = chat.invoke([SystemMessage("Be brief."), HumanMessage("Hi")], stop=[". Bye"])
    assert isinstance(reply, AIMessage) and reply.content == "Hello there"
    assert reply.usage_metadata["output_tokens"] > 0 and reply.response_metadata["finish_reason"] == "stop"
    prompt = chat.engine.requests[0].prompt.text
    assert "Be brief." in prompt and "Hi" in prompt


def test_structured_output_is_decoded_under_the_schema_and_validated():
    engine = FakeEngine()
    chat = CastlineChatModel(engine=engine)
    person = chat.with_structured_output(Person).invoke("Anna is 31.")
    assert isinstance(person, Person)
    assert engine.requests[-1].constraint.json_schema["title"] == "Person"  # constrained, not parsed
    assert chat.with_structured_output(Literal["yes", "no"]).invoke("Well?") in ("yes", "no")
    prompt = ChatPromptTemplate.from_messages([("system", "Extract."), ("human", "{text}")])
    assert isinstance((prompt | chat.with_structured_output(Person)).invoke({"text": "Bo is 4"}), Person)


def test_structured_output_errors_are_typed_or_returned_with_include_raw():
    chat = CastlineChatModel(engine=FakeEngine(max_context=40))  # no room for the reply
    with pytest.raises(InvalidInputError, match="context"):
        chat.with_structured_output(Person).invoke("Anna is 31.")
    result = chat.with_structured_output(Person, include_raw=True).invoke("Anna is 31.")
    assert result["parsed"] is None and isinstance(result["parsing_error"], InvalidInputError)
    assert result["raw"].content == ""


def test_what_the_chat_model_cannot_do_fails_clearly():
    chat = CastlineChatModel(engine=FakeEngine())
    with pytest.raises(InvalidInputError, match="tool message"):
        chat.invoke([ToolMessage("42", tool_call_id="1")])
    with pytest.raises(NotImplementedError, match="with_structured_output"):
        chat.bind_tools([])


@pytest.mark.real_model
def test_structured_output_on_the_embedded_model(real_model):
    person = (
        CastlineChatModel(engine=real_model).with_structured_output(Person).invoke("Anna is 31 years old.")
    )
    assert isinstance(person, Person)
