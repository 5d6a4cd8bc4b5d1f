"""``Chain``: the langchain-core ``Runnable`` every castline chain is.

A chain turns a batch of inputs into a batch of typed outputs in one model call
(``_run_batch``). ``invoke`` is a batch of one; ``batch`` is one batched model call, not a thread
pool of single calls; ``ainvoke``/``abatch`` run those off the event loop. Composition (``|``),
``bind``, ``with_retry``, ``with_fallbacks`` and callbacks come from langchain-core.

Per-call generation settings are keyword arguments: ``chain.invoke(x, max_new_tokens=64)``,
or bound once with ``chain.bind(temperature=0.7, seed=1)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, TypeVar

from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import run_in_executor
from pydantic import BaseModel, ValidationError

from castline.models.local import Generation, LocalModel
from castline.schemas.errors import InvalidInputError, TruncatedOutputError
from castline.schemas.output_types import OutputSpec
from castline.schemas.settings import GenerationSettings

Output = TypeVar("Output")


class Chain(Runnable[Any, Output], ABC):
    """Base class: validates inputs against ``input_model`` and runs whole batches at once."""

    model: LocalModel
    settings: GenerationSettings
    input_model: type[BaseModel]

    @abstractmethod
    def _run_batch(
        self, inputs: list[dict[str, Any]], settings: GenerationSettings
    ) -> list[Output | Exception]:
        """Outputs for validated ``inputs``, in order; a failed item is its exception."""

    # -- input ---------------------------------------------------------------------------------

    def _coerce_input(self, value: Any) -> dict[str, Any]:
        if isinstance(value, BaseModel):
            value = value.model_dump()
        elif isinstance(value, PromptValue):
            # Output of a langchain-core prompt upstream: its text is the chain's one input field.
            value = value.to_string()
        if isinstance(value, str) and len(self.input_model.model_fields) == 1:
            value = {next(iter(self.input_model.model_fields)): value}
        if not isinstance(value, Mapping):
            raise InvalidInputError(
                f"{self.get_name()} takes a dict or a Pydantic object with fields "
                f"{sorted(self.input_model.model_fields)}, not {type(value).__name__}"
            )
        try:
            checked = self.input_model.model_validate(dict(value))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise InvalidInputError(f"{self.get_name()} input is invalid: {problems}") from exc
        # Fields keep their Python values (nested objects stay objects for the template).
        return {name: getattr(checked, name) for name in self.input_model.model_fields}

    # -- Runnable ------------------------------------------------------------------------------

    @property
    def InputType(self) -> type[BaseModel]:
        return self.input_model

    def get_input_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return self.input_model

    def _settings_for(self, overrides: dict[str, Any]) -> GenerationSettings:
        return self.settings.merged(overrides)

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Output:
        settings = self._settings_for(kwargs)

        def run_one(value: Any) -> Output:
            result = self._run_batch([self._coerce_input(value)], settings)[0]
            if isinstance(result, Exception):
                raise result
            return result

        return self._call_with_config(run_one, input, config)

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Output]:
        settings = self._settings_for(kwargs)

        def run_all(values: list[Any]) -> list[Output | Exception]:
            coerced: list[dict[str, Any] | Exception] = []
            for value in values:
                try:
                    coerced.append(self._coerce_input(value))
                except InvalidInputError as exc:
                    if not return_exceptions:
                        raise
                    coerced.append(exc)
            valid = [c for c in coerced if not isinstance(c, Exception)]
            results = iter(self._run_batch(valid, settings) if valid else [])
            return [c if isinstance(c, Exception) else next(results) for c in coerced]

        return self._batch_with_config(run_all, inputs, config, return_exceptions=return_exceptions)

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Output]:
        # The default abatch gathers single ainvoke calls; one batched call is faster.
        first = config[0] if isinstance(config, list) and config else config
        return await run_in_executor(
            first if isinstance(first, dict) else None,
            lambda: self.batch(inputs, config, return_exceptions=return_exceptions, **kwargs),
        )

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Output:
        return await run_in_executor(config, lambda: self.invoke(input, config, **kwargs))


def parse_generation(generation: Generation, spec: OutputSpec, settings: GenerationSettings) -> Any:
    """The typed value of ``generation``, or the typed error saying why there is none."""
    if not generation.complete:
        limit = settings.max_new_tokens or spec.default_max_new_tokens
        return TruncatedOutputError(generation.text, limit)
    try:
        return spec.parse(generation.text)
    except Exception as exc:  # OutputValidationError from the spec, kept with its raw text
        return exc


__all__ = ["Chain", "parse_generation"]
