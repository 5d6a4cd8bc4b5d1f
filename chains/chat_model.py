"""``CastlineChatModel``: any castline engine as a LangChain chat model.

LangChain users ask a chat model for typed output with ``with_structured_output(schema)``. Here
that returns castline's constrained decoding and validation: the reply is generated under the
schema's grammar and comes back as the validated object (or a typed castline error), never as
text to parse. Plain ``invoke`` returns an ``AIMessage`` of free text.

    >>> chat = CastlineChatModel(engine=load_model())
    >>> chat.with_structured_output(Person).invoke("Anna is 31.")
    Person(name='Anna', age=31)

Tool calling is not offered: ``bind_tools`` raises ``NotImplementedError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, Field

from castline.chains.base import parse_generation
from castline.models.protocol import Engine, GenerationRequest
from castline.prompts.templates import Message
from castline.schemas.errors import CastlineError, InvalidInputError
from castline.schemas.output_types import output_spec
from castline.schemas.settings import GenerationSettings

_ROLES = {"human": "user", "ai": "assistant", "system": "system"}


class CastlineChatModel(BaseChatModel):
    """A LangChain chat model whose replies come from a castline engine (any of them)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: Engine = Field(description="the castline engine that runs the model")
    max_new_tokens: int = Field(256, description="the reply's token budget")
    temperature: float = Field(0.0, description="0 decodes greedily")
    seed: int | None = None

    @property
    def _llm_type(self) -> str:
        return f"castline-{self.engine.engine_name}"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.engine.name, "engine": self.engine.engine_name}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """What LangChain tracing records of a call: provider, model, settings."""
        params = super()._get_ls_params(stop=stop, **kwargs)
        model = kwargs.get("model", self.engine.name)
        params["ls_provider"] = "castline"
        params["ls_model_name"] = model
        params["ls_max_tokens"] = self.max_new_tokens
        return params

    def _settings(self) -> GenerationSettings:
        return GenerationSettings(temperature=self.temperature, seed=self.seed)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text, metadata, usage = self._reply(messages, stop, kwargs)
        message = AIMessage(content=text, response_metadata=metadata, usage_metadata=usage)  # type: ignore[arg-type]
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """The reply as one chunk: engines return whole generations, they do not stream tokens yet."""
        text, metadata, usage = self._reply(messages, stop, kwargs)
        chunk = ChatGenerationChunk(
            message=AIMessageChunk(content=text, response_metadata=metadata, usage_metadata=usage)  # type: ignore[arg-type]
        )
        if run_manager is not None:
            run_manager.on_llm_new_token(text, chunk=chunk)
        yield chunk

    def _reply(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[str, dict[str, Any], dict[str, int]]:
        """The reply's text (cut at the first stop sequence), its metadata and its token usage."""
        if kwargs.get("model", self.engine.name) != self.engine.name:
            raise InvalidInputError(
                f"this chat model runs {self.engine.name!r}, not {kwargs['model']!r}; load that model into "
                "an engine and make a chat model over it"
            )
        budget = int(kwargs.get("max_new_tokens", self.max_new_tokens))
        request = GenerationRequest(self._prompt(messages), None, self._settings(), budget)
        [generation] = self.engine.generate([request])
        if isinstance(generation, Exception):
            raise generation
        text = generation.text
        for marker in stop or ():
            text = text.split(marker, 1)[0]  # LangChain's stop sequences end the reply before them
        metadata = {
            "model_name": self.engine.name,
            "finish_reason": "stop" if generation.complete else "length",
        }
        prompt_tokens = self.engine.prompt_length(request.prompt)
        usage = {
            "input_tokens": prompt_tokens,
            "output_tokens": len(generation.token_ids),
            "total_tokens": prompt_tokens + len(generation.token_ids),
        }
        return text, metadata, usage

    def _prompt(self, messages: Sequence[BaseMessage]) -> Any:
        turns: list[Message] = []
        for message in messages:
            role = _ROLES.get(message.type)
            if role is None or not isinstance(message.content, str):
                raise InvalidInputError(
                    f"castline's chat model takes system, human and AI messages of text, not a "
                    f"{message.type} message with {type(message.content).__name__} content"
                )
            turns.append({"role": role, "content": message.content})
        return self.engine.chat_prompt(turns)

    def with_structured_output(  # type: ignore[override]
        self, schema: Any, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[LanguageModelInput, Any]:
        """A runnable whose reply is decoded under ``schema``'s grammar and returned validated.

        ``schema``: a Pydantic model, a JSON Schema dict, a ``Literal`` / ``Enum`` label set, or any
        other castline output type. ``include_raw=True`` returns ``{"raw", "parsed",
        "parsing_error"}`` as LangChain's chat models do.
        """
        spec = output_spec(schema)
        self.engine.prepare(spec)  # a schema the grammar cannot take fails here, not per call

        def reply(value: LanguageModelInput) -> Any:
            messages = self._convert_input(value).to_messages()
            request = GenerationRequest(
                self._prompt(messages), spec, self._settings(), spec.default_max_new_tokens
            )
            generation = self.engine.generate([request])[0]
            parsed = parse_generation(generation, spec, request.max_new_tokens)
            error = parsed if isinstance(parsed, CastlineError) else None
            if include_raw:
                raw = AIMessage(content="" if isinstance(generation, CastlineError) else generation.text)
                return {"raw": raw, "parsed": None if error else parsed, "parsing_error": error}
            if error is not None:
                raise error
            return parsed

        return RunnableLambda(reply, name="CastlineStructuredOutput")

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        raise NotImplementedError(
            "castline's chat model does not call tools; use with_structured_output(schema) for typed replies"
        )
