"""``Chain``: the langchain-core ``Runnable`` every castline chain is.

A chain turns a batch of inputs into a batch of typed outputs in one model call
(``_run_batch``). ``invoke`` is a batch of one; ``batch`` is one batched model call, not a thread
pool of single calls; ``ainvoke``/``abatch`` run those off the event loop. Composition (``|``),
``bind``, ``with_retry``, ``with_fallbacks`` and callbacks come from langchain-core. Concurrent
``ainvoke`` calls are coalesced into one batch (``castline.chains.coalescing``), and
``max_concurrency`` in the config bounds how many inputs one model call takes.

Per-call generation settings are keyword arguments: ``chain.invoke(x, max_new_tokens=64)``,
or bound once with ``chain.bind(temperature=0.7, seed=1)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from langchain_core.callbacks import CallbackManagerForChainRun
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import run_in_executor
from pydantic import BaseModel, ValidationError

from castline.chains.coalescing import MicroBatcher
from castline.chains.streaming import HOOKS, CallHooks, ModelCallReport, astream_outputs, stream_outputs
from castline.models.protocol import (
    Capability,
    Constraint,
    Engine,
    Generation,
    GenerationRequest,
    Prompt,
)
from castline.schemas.errors import (
    CastlineError,
    InvalidInputError,
    ModelLoadError,
    TruncatedOutputError,
    UserError,
)
from castline.schemas.output_types import OutputSpec
from castline.schemas.settings import GenerationSettings

Output = TypeVar("Output")


class Chain(Runnable[Any, Output], ABC):
    """Base class: validates inputs against ``input_model`` and runs whole batches at once."""

    model: Engine
    settings: GenerationSettings
    input_model: type[BaseModel]
    adapter: str | None = None  # the LoRA adapter this chain runs with (None: the base model)
    # Concurrent ainvoke calls arriving within this many seconds (or while a batch runs) share one
    # batched model call; None runs each on its own.
    coalesce_window: float | None = 0.005

    @abstractmethod
    def _run_batch(
        self, inputs: list[dict[str, Any]], settings: GenerationSettings
    ) -> list[Output | Exception]:
        """Outputs for validated ``inputs``, in order; a failed item is its exception."""

    # -- input ---------------------------------------------------------------------------------

    def _coerce_input(self, value: Any) -> dict[str, Any]:
        # Prompt values are Pydantic objects too: recognise them first. The text of a langchain-core
        # prompt upstream (string or chat) fills the chain's one input field.
        if isinstance(value, PromptValue):
            value = value.to_string()
        elif isinstance(value, BaseModel):
            value = value.model_dump()
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
        values = {name: getattr(checked, name) for name in self.input_model.model_fields}
        for name, field_value in values.items():
            _check_unicode(field_value, name, self.get_name())
        return values

    # -- adapters ------------------------------------------------------------------------------

    def training_pair(self, input: Any, output: Any) -> tuple[Prompt, str]:
        """The prompt this chain builds for ``input`` and the exact text its decoder emits for ``output``.

        Raises ``InvalidInputError`` naming the problem when ``output`` is not a valid output.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot be fine-tuned")

    def adapter_payload(self) -> dict[str, Any]:
        """What an adapter for this chain is bound to: the task and its labels or schema."""
        return {"task": type(self).__name__}

    def fine_tune(
        self,
        examples: Sequence[tuple[Any, Any]],
        *,
        settings: Any = None,
        name: str | None = None,
        save_to: str | Path | None = None,
        evaluate_on: Sequence[Any] | None = None,
        validate_on: Sequence[Any] | None = None,
    ) -> Any:
        """Train a LoRA adapter from ``(input, expected output)`` pairs and use it in this chain.

        Every example is checked before training starts; a bad one raises ``InvalidInputError``
        naming its row. ``validate_on`` (records of ``castline.evaluation.readers``) chooses the
        adapter: at each evaluation the chain runs on it, and the weights with the best task metric
        (accuracy, entity F1, ...) are kept; ``settings.patience`` stops training once it stops
        improving. Without it the held-out loss chooses. ``evaluate_on`` is evaluated after
        training and the figures go into the report and the saved metadata. A Ctrl-C keeps the
        best adapter so far (saved as usual; ``report.interrupted``). ``settings`` is a
        ``castline.models.transformers.adapters.LoraSettings``; training needs the transformers engine.
        """
        self.model.require(Capability.TRAINING, f"{type(self).__name__}.fine_tune")
        from castline.models.transformers.adapters import LoraSettings

        pairs = []
        for row, (value, output) in enumerate(examples):
            try:
                pairs.append(self.training_pair(self._coerce_input(value), output))
            except (InvalidInputError, ValueError) as exc:
                raise InvalidInputError(f"training example {row}: {exc}") from exc
        name = name or f"{type(self).__name__.lower()}-{len(self.model.adapters)}"
        score = None
        if validate_on:
            from castline.evaluation.evaluate import evaluate, primary_metric

            validation = list(validate_on)
            task: list[str] = []

            def metric() -> float:
                self._adapter_changed()  # the weights moved: cached priors are stale
                result = evaluate(self, validation)
                task[:] = [result.task]
                return result.metrics[primary_metric(result.task)]

            score = (f"task metric on {len(validation)} validation records", metric)
        previous = self.adapter
        self.adapter = name  # validation runs the chain with the adapter being trained
        try:
            report = self.model.train_adapter(name, pairs, settings, score)  # type: ignore[attr-defined]
        except BaseException:
            self.adapter = previous
            raise
        self._adapter_changed()
        if score is not None and task:
            report.selected_by = f"{primary_metric(task[0])} on {len(validation)} validation records"
        if evaluate_on:
            from castline.evaluation.evaluate import evaluate

            report.evaluation = evaluate(self, list(evaluate_on)).metrics
        if save_to is not None:
            payload = self.adapter_payload()
            self.model.save_adapter(  # type: ignore[attr-defined]
                name,
                save_to,
                {
                    **payload,
                    "payload_hash": payload_digest(payload),
                    "template": getattr(getattr(self, "template", None), "source", None),
                    "settings": asdict(settings or LoraSettings()),
                    "training": asdict(report),
                },
            )
        return report

    def use_adapter(self, directory: str | Path, name: str | None = None) -> Chain[Output]:
        """Load a saved adapter into this chain's engine (once) and run this chain with it.

        Refuses an adapter trained for another task, label set or schema, or another base model.
        Adapters are told apart by their weights: two folders with the same name are two adapters.
        """
        self.model.require(Capability.ADAPTERS, f"{type(self).__name__}.use_adapter")
        info = self.model.load_adapter(Path(directory), name)
        payload = self.adapter_payload()
        if info.metadata.get("payload_hash") != payload_digest(payload):
            raise ModelLoadError(
                f"adapter {directory} was trained for {info.metadata.get('task')} with a different label "
                f"set or schema than this {type(self).__name__}; build the chain with the same labels/schema"
            )
        self.adapter = info.name
        self._adapter_changed()
        return self

    def merge_adapter(self) -> Chain[Output]:
        """Run this chain on a copy of its model with its adapter merged in (no LoRA cost per token)."""
        if self.adapter is None:
            raise UserError("this chain has no adapter to merge; fine_tune or use_adapter first")
        self.model.require(Capability.MERGE, f"{type(self).__name__}.merge_adapter")
        self.model = self.model.merged(self.adapter)  # type: ignore[attr-defined]
        self._adapter_changed()
        return self

    # -- calling the engine --------------------------------------------------------------------

    def _generate(
        self,
        prompts: Sequence[Prompt],
        constraints: Sequence[Constraint],
        settings: GenerationSettings,
        budget: int,
    ) -> list[Generation | CastlineError]:
        """One engine call for ``prompts``, each under its constraint, with this chain's adapter.

        The call is reported to LangChain callbacks, and its tokens handed on as they arrive, when
        the chain call asked for them (``castline.chains.streaming``).
        """
        report = ModelCallReport(HOOKS.get(), self.model.name, [p.text for p in prompts])
        streaming = report.wants_tokens and Capability.STREAMING in self.model.capabilities
        requests = [
            GenerationRequest(p, c, settings, budget, self.adapter, report.sink(i) if streaming else None)
            for i, (p, c) in enumerate(zip(prompts, constraints, strict=True))
        ]
        try:
            results = self.model.generate(requests)
        except BaseException as exc:
            report.fail(exc)
            raise
        report.finish(results)
        return results

    def _partial(self, text: str) -> Any | None:
        """A partial output from the text the model has written so far (None: none to show)."""
        return None

    def _adapter_changed(self) -> None:
        """Hook for chains that cache model-dependent state (classification's calibration prior)."""

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

        def run_one(value: Any, run_manager: CallbackManagerForChainRun) -> Output:
            with _reporting_to(run_manager):
                result = self._run_batch([self._coerce_input(value)], settings)[0]
            if isinstance(result, Exception):
                raise result
            return result

        return self._call_with_config(run_one, input, config)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Output]:
        """Partial outputs as the model writes them (JSON output types), then the final output."""
        yield from stream_outputs(lambda: self.invoke(input, config, **kwargs), self._partial)

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Output]:
        async for item in astream_outputs(lambda: self.stream(input, config, **kwargs)):
            yield item

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Output]:
        settings = self._settings_for(kwargs)

        def run_all(
            values: list[Any], run_manager: list[CallbackManagerForChainRun]
        ) -> list[Output | Exception]:
            coerced: list[dict[str, Any] | Exception] = []
            for value in values:
                try:
                    coerced.append(self._coerce_input(value))
                except InvalidInputError as exc:
                    if not return_exceptions:
                        raise
                    coerced.append(exc)
            valid = [c for c in coerced if not isinstance(c, Exception)]
            # max_concurrency bounds how many inputs go to the model at once.
            step = max(1, _max_concurrency(config) or len(valid) or 1)
            done: list[Output | Exception] = []
            # One model call serves every input: its runs are reported under the first input's run.
            with _reporting_to(run_manager[0] if run_manager else None):
                for start in range(0, len(valid), step):
                    done += self._run_batch(valid[start : start + step], settings)
            results = iter(done)
            out = [c if isinstance(c, Exception) else next(results) for c in coerced]
            if not return_exceptions:
                for item in out:
                    if isinstance(item, Exception):
                        raise item
            return out

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
        """Concurrent calls with the same settings run as one batch (``coalesce_window``)."""
        if self.coalesce_window is None:
            return await run_in_executor(config, lambda: self.invoke(input, config, **kwargs))
        batcher = self._batcher(self._settings_for(kwargs))

        async def run_one(value: Any) -> Output:
            result: Output = await batcher.submit(self._coerce_input(value))
            return result

        return await self._acall_with_config(run_one, input, config)

    def _batcher(self, settings: GenerationSettings) -> MicroBatcher:
        """This event loop's batcher for ``settings`` (calls with other settings never mix)."""
        loop = asyncio.get_running_loop()
        per_loop = self.__dict__.setdefault("_batchers", weakref.WeakKeyDictionary())
        batchers = per_loop.setdefault(loop, {})
        if settings not in batchers:
            window = self.coalesce_window or 0.0
            batchers[settings] = MicroBatcher(lambda items: self._run_batch(items, settings), window)
        return batchers[settings]


@contextlib.contextmanager
def _reporting_to(run_manager: CallbackManagerForChainRun | None) -> Iterator[None]:
    """Model calls made inside report to LangChain under ``run_manager``'s run."""
    if run_manager is None:
        yield
        return
    outer = HOOKS.get()
    token = HOOKS.set(CallHooks(run_manager.get_child(), outer.on_text if outer else None))
    try:
        yield
    finally:
        HOOKS.reset(token)


def _max_concurrency(config: RunnableConfig | list[RunnableConfig] | None) -> int | None:
    first = config[0] if isinstance(config, list) and config else config
    return first.get("max_concurrency") if isinstance(first, dict) else None


def _check_unicode(value: Any, where: str, chain: str) -> None:
    """Refuse text no tokenizer can encode (unpaired UTF-16 surrogates), naming the field."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInputError(
                f"{chain} input {where} holds an unpaired surrogate at character {exc.start}, which is "
                "not text; decode the source with errors='replace' or fix its encoding"
            ) from None
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_unicode(item, f"{where}[{i}]", chain)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(item, f"{where}.{key}", chain)


def token_budget(settings: GenerationSettings, default: int) -> int:
    """The output budget of a call: the caller's ``max_new_tokens``, else the chain's default."""
    return settings.max_new_tokens or default


def payload_digest(payload: Any) -> str:
    """Stable hash of what an adapter is bound to (task, label set or schema)."""
    import hashlib

    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def parse_generation(generation: Generation | CastlineError, spec: OutputSpec, budget: int) -> Any:
    """The typed value of ``generation``, or the typed error saying why there is none."""
    if isinstance(generation, CastlineError):
        return generation
    if not generation.complete:
        return TruncatedOutputError(generation.text, budget)
    try:
        return spec.parse(generation.text)
    except CastlineError as exc:  # OutputValidationError from the spec, kept with its raw text
        return exc


__all__ = ["Chain", "parse_generation", "payload_digest", "token_budget"]
