"""Streaming: partial outputs while the model writes, and the model call in LangChain tracing.

Every generation a chain runs goes through ``Chain._generate``. A chain call sets a ``CallHooks``
in a context variable; ``_generate`` reads it and

- reports the model call to LangChain callbacks: ``on_llm_start`` (one run per prompt, under the
  chain's run), ``on_llm_new_token`` as tokens arrive, ``on_llm_end`` / ``on_llm_error``;
- hands the text written so far to ``on_text``, which ``stream``/``astream`` turn into partial
  outputs.

Tokens arrive only from engines with ``Capability.STREAMING`` (transformers, llama.cpp, the fake);
elsewhere the model call is still reported, with no tokens, and ``stream`` yields the final output.

A partial output holds only values that are complete: for a Pydantic model, the fields whose JSON
value has been written in full (``model_fields_set`` names them, the rest are None until then); for
a list, its complete items. Each partial value is validated as its field; the final output is the
one ``invoke`` returns, validated as a whole.
"""

from __future__ import annotations

import asyncio
import codecs
import queue
import threading
import typing
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextvars import ContextVar, copy_context
from dataclasses import dataclass
from typing import Annotated, Any

from langchain_core.callbacks import CallbackManager, CallbackManagerForLLMRun
from langchain_core.outputs import Generation as LCGeneration
from langchain_core.outputs import LLMResult
from pydantic import BaseModel, TypeAdapter, ValidationError

from castline.models.protocol import Generation
from castline.schemas.errors import CastlineError
from castline.schemas.output_types import OutputSpec


@dataclass(frozen=True)
class CallHooks:
    """What one chain call wants to hear while the model generates."""

    callbacks: CallbackManager | None = None  # LLM runs go under the chain's run
    on_text: Callable[[int, str], None] | None = None  # (request index, text so far)


HOOKS: ContextVar[CallHooks | None] = ContextVar("castline_call_hooks", default=None)


class ModelCallReport:
    """One engine call as LangChain sees it, and the token sinks that feed it and ``on_text``."""

    def __init__(self, hooks: CallHooks | None, model_name: str, prompts: Sequence[str]) -> None:
        self.on_text = hooks.on_text if hooks else None
        self.runs: list[CallbackManagerForLLMRun] = []
        if hooks is not None and hooks.callbacks is not None:
            self.runs = hooks.callbacks.on_llm_start(
                {"name": model_name, "id": ["castline", model_name]}, list(prompts)
            )

    @property
    def wants_tokens(self) -> bool:
        """Whether anyone listens to tokens (a run with no handlers needs only its start and end)."""
        return any(run.handlers for run in self.runs) or self.on_text is not None

    def sink(self, index: int) -> Callable[[bytes], None]:
        """``on_token`` for request ``index``: bytes in, whole characters out (UTF-8 may split)."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        written: list[str] = []

        def on_token(piece: bytes) -> None:
            delta = decoder.decode(piece)
            if not delta:
                return
            written.append(delta)
            if self.runs:
                self.runs[index].on_llm_new_token(delta)
            if self.on_text is not None:
                self.on_text(index, "".join(written))

        return on_token

    def finish(self, results: Sequence[Generation | CastlineError]) -> None:
        if not self.runs:
            return  # nobody asked (a coalesced ainvoke batch serves several callers)
        for run, result in zip(self.runs, results, strict=True):
            if isinstance(result, Exception):
                run.on_llm_error(result)
            else:
                run.on_llm_end(LLMResult(generations=[[LCGeneration(text=result.text)]]))

    def fail(self, error: BaseException) -> None:
        for run in self.runs:
            run.on_llm_error(error)


# -- partial outputs -------------------------------------------------------------------------------


def complete_prefix(text: str) -> Any | None:
    """The JSON value ``text`` starts with, keeping only top-level members written in full.

    ``{"name":"Ad`` gives ``{}``, ``{"name":"Ada","age":3`` gives ``{"name": "Ada"}`` (``3`` may
    go on to ``31``), ``[{"a":1},{"a"`` gives ``[{"a": 1}]``. None before the value opens, once
    it is closed (the final output follows), or when it is not an object or array.
    """
    import json

    stripped = text.lstrip()
    if not stripped or stripped[0] not in "{[":
        return None
    closer = "}" if stripped[0] == "{" else "]"
    depth, in_string, escape, cut = 0, False, False, 1
    for i, ch in enumerate(stripped):
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return None
        elif ch == "," and depth == 1:
            cut = i  # every member before this comma is complete
    try:
        return json.loads(stripped[:cut] + closer)
    except json.JSONDecodeError:
        return None


def partial_output(spec: OutputSpec, text: str) -> Any | None:
    """A partial output of ``spec``'s type from the text written so far (None: nothing final yet)."""
    if spec.kind != "json":
        return None
    value = complete_prefix(text)
    if not value:
        return None
    python_type = spec.python_type
    if isinstance(python_type, type) and issubclass(python_type, BaseModel) and isinstance(value, dict):
        return _partial_model(python_type, value)
    if typing.get_origin(python_type) is list and isinstance(value, list):
        (item_type,) = typing.get_args(python_type) or (Any,)
        adapter: TypeAdapter[Any] = TypeAdapter(item_type)
        items = []
        for item in value:
            try:
                items.append(adapter.validate_python(item))
            except ValidationError:
                break  # the final output will fail validation; stop where it goes wrong
        return items or None
    return value


def _partial_model(model: type[BaseModel], values: dict[str, Any]) -> BaseModel | None:
    filled: dict[str, Any] = {}
    for name, value in values.items():
        field = model.model_fields.get(name)
        if field is None:
            continue
        try:
            field_type: Any = Annotated[field.annotation, field]  # the field's type and its constraints
            filled[name] = TypeAdapter(field_type).validate_python(value)
        except ValidationError:
            continue  # not final as written; the final output reports it
    if not filled:
        return None
    unset = {name: None for name in model.model_fields if name not in filled}
    return model.model_construct(_fields_set=set(filled), **unset, **filled)


# -- stream and astream ----------------------------------------------------------------------------


def stream_outputs(invoke: Callable[[], Any], partial: Callable[[str], Any | None]) -> Iterator[Any]:
    """Partial outputs as the model writes (each new one once), then the final output."""
    updates: queue.Queue[tuple[str, Any]] = queue.Queue()
    context = copy_context()
    outer = HOOKS.get()
    callbacks = outer.callbacks if outer else None

    def on_text(index: int, text: str) -> None:
        if index == 0:  # the first request is the input's output (windows and retries come later)
            updates.put(("text", text))

    def run() -> None:
        HOOKS.set(CallHooks(callbacks, on_text))
        try:
            updates.put(("done", invoke()))
        except BaseException as exc:  # handed to the caller's thread, raised there
            updates.put(("error", exc))

    worker = threading.Thread(target=context.run, args=(run,), name="castline-stream", daemon=True)
    worker.start()
    last: Any = None
    while True:
        kind, value = updates.get()
        if kind == "text":
            current = partial(value)
            if current is not None and current != last:
                last = current
                yield current
        elif kind == "done":
            worker.join()
            yield value
            return
        else:
            worker.join()
            raise value


async def astream_outputs(sync_stream: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """``stream_outputs`` run in a worker thread, its items handed to the event loop as they come."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def produce() -> None:
        try:
            for item in sync_stream():
                loop.call_soon_threadsafe(items.put_nowait, ("item", item))
            loop.call_soon_threadsafe(items.put_nowait, ("end", None))
        except BaseException as exc:
            loop.call_soon_threadsafe(items.put_nowait, ("error", exc))

    producer = loop.run_in_executor(None, copy_context().run, produce)
    while True:
        kind, value = await items.get()
        if kind == "item":
            yield value
        elif kind == "end":
            await producer
            return
        else:
            await producer
            raise value
