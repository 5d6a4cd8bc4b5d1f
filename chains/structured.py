"""``StructuredChain``: template + model + output type -> a validated instance of the type.

    >>> class Person(BaseModel):
    ...     name: str
    ...     age: int
    >>> chain = StructuredChain(Person, model=load_model())
    >>> chain.invoke({"text": "Anna is 31."})
    Person(name='Anna', age=31)

The decoding constraint is compiled when the chain is built, so the first call does not pay for
it and an unsupported type fails at once. Template variables are checked against the chain's
input fields at build time too.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

from pydantic import BaseModel, create_model

from castline.chains.base import Chain, Output, parse_generation, token_budget
from castline.chains.streaming import partial_output
from castline.models.protocol import Capability, Engine, Prompt
from castline.prompts.templates import PromptTemplate, load_template
from castline.schemas.errors import InvalidInputError, OutputValidationError
from castline.schemas.output_types import OutputSpec, Regex, output_spec
from castline.schemas.settings import GenerationSettings

DEFAULT_INSTRUCTION = "Read the user's text and answer with exactly the requested output."

_default_model: Engine | None = None
_default_lock = threading.Lock()


def default_model() -> Engine:
    """The embedded default model, loaded once per process and shared by chains built without one.

    Chains built in several threads at once share one load (the lock), never load twice.
    """
    global _default_model
    with _default_lock:
        if _default_model is None:
            from castline.models.loading import load_model

            _default_model = load_model()
        return _default_model


_T = TypeVar("_T")


class StructuredChain(Chain[Output]):
    """Render a template, generate under the output type's constraint, return a validated object.

    Args:
        output_type: a Pydantic model (or any type Pydantic describes), a ``Literal``/``Enum``/
            ``Labels`` label set, or ``Regex(pattern)``.
        model: an ``Engine`` (``load_model(...)``, or ``FakeEngine()`` in tests); None uses the
            embedded default model.
        template: a shipped template name, a ``.jinja`` path, or a ``PromptTemplate``.
        input_type: a Pydantic model for the input; by default the input is a dict holding the
            template's variables (a plain string is accepted when there is only one).
        partial_variables: template values fixed when the chain is built (instruction, ...).
        examples: few-shot pairs ``(input dict, output)`` shown to the model as earlier turns.
        retries: how many times to sample again (temperature 0.7, seeded) an output that fits the
            grammar but fails validation; 0 (the default) raises ``OutputValidationError`` at once.
        settings / generation keywords: ``max_new_tokens``, ``temperature``, ``top_p``, ``seed``.
    """

    # Type checkers see the output type: StructuredChain(Person) is a StructuredChain[Person],
    # StructuredChain(Regex(...)) a StructuredChain[str]; label sets and JSON Schema dicts give Any.
    @overload
    def __init__(self: StructuredChain[_T], output_type: type[_T], **options: Any) -> None: ...
    @overload
    def __init__(self: StructuredChain[str], output_type: Regex, **options: Any) -> None: ...
    @overload
    def __init__(self: StructuredChain[Any], output_type: Any, **options: Any) -> None: ...

    def __init__(
        self,
        output_type: Any,
        *,
        model: Engine | None = None,
        template: str | Path | PromptTemplate = "structured",
        input_type: type[BaseModel] | None = None,
        partial_variables: Mapping[str, Any] | None = None,
        examples: Sequence[tuple[Mapping[str, Any], Any]] = (),
        retries: int = 0,
        settings: GenerationSettings | None = None,
        **generation: Any,
    ) -> None:
        self.model = model or default_model()
        self.model.require(Capability.GRAMMAR, f"{type(self).__name__}({output_type!r})")
        self.retries = retries
        self.spec: OutputSpec = output_spec(output_type)
        self.template = load_template(template)
        self.settings = (settings or GenerationSettings()).merged(generation)
        self.partials = {**self._provided_variables(examples), **(partial_variables or {})}
        if input_type is not None:
            self.template.check_variables(
                set(input_type.model_fields) | set(self.partials), f"input type {input_type.__name__}"
            )
            self.input_model = input_type
        else:
            needed = sorted(self.template.variables - set(self.partials))
            fields: dict[str, Any] = {name: (Any, ...) for name in needed}
            self.input_model = create_model(f"{type(self).__name__}Input", **fields)
        # Compile the constraint now: the first call stays fast, a bad type fails here.
        self.model.prepare(self.spec)

    def _provided_variables(self, examples: Sequence[tuple[Mapping[str, Any], Any]]) -> dict[str, Any]:
        schema = json.dumps(self.spec.json_schema, separators=(",", ":")) if self.spec.json_schema else ""
        return {
            "instruction": DEFAULT_INSTRUCTION,
            "output_schema": schema,
            "labels": list(self.spec.labels),
            "examples": [{"input": dict(inp), "output": self.serialize(out)} for inp, out in examples],
        }

    def serialize(self, value: Any) -> str:
        """The exact text the constrained decoder produces for ``value`` (used for few-shot turns)."""
        if self.spec.kind == "json":
            from pydantic import TypeAdapter

            return TypeAdapter(self.spec.python_type).dump_json(value).decode()
        return str(getattr(value, "value", value))

    def training_pair(self, input: Any, output: Any) -> tuple[Prompt, str]:
        from pydantic import TypeAdapter

        value = TypeAdapter(self.spec.python_type).validate_python(output)
        if self.spec.kind == "labels" and self.serialize(value) not in self.spec.labels:
            raise InvalidInputError(f"label {output!r} is not one of {list(self.spec.labels)}")
        return self.prompt_for(input), self.serialize(value)

    def _partial(self, text: str) -> Any | None:
        return partial_output(self.spec, text)

    def adapter_payload(self) -> dict[str, Any]:
        return {"task": type(self).__name__, "output": self.spec.grammar_key}

    @property
    def OutputType(self) -> Any:
        return self.spec.python_type

    def prompt_for(self, values: Mapping[str, Any]) -> Prompt:
        """The exact prompt text the model sees for ``values`` (chat template applied)."""
        return self.model.chat_prompt(self.template.render({**self.partials, **values}))

    def _run_batch(self, inputs: list[dict[str, Any]], settings: GenerationSettings) -> list[Any]:
        prompts = [self.prompt_for(values) for values in inputs]
        budget = token_budget(settings, self.spec.default_max_new_tokens)
        generations = self._generate(prompts, [self.spec] * len(prompts), settings, budget)
        results = [parse_generation(g, self.spec, budget) for g in generations]
        for attempt in range(self.retries):
            failed = [i for i, r in enumerate(results) if isinstance(r, OutputValidationError)]
            if not failed:
                break
            retry = settings.merged({"temperature": 0.7, "seed": (settings.seed or 0) + attempt + 1})
            again = self._generate([prompts[i] for i in failed], [self.spec] * len(failed), retry, budget)
            for i, generation in zip(failed, again, strict=True):
                results[i] = parse_generation(generation, self.spec, budget)
        return results
