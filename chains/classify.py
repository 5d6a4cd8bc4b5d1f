"""Classification with a real probability for every label.

The model is not asked to write a label or a confidence. Each label's full text (followed by the
end-of-turn token, so "card" and "card_arrival" stay distinct) is scored as a continuation of the
prompt by the engine (``Engine.score``: unconstrained log-probabilities), and the probabilities
are the normalised sequence probabilities over the label set, computed here, above the engine
seam, so they mean the same on every engine.

Calibration removes the label prior a small model brings to the prompt: the label distribution for
content-free inputs ("N/A", "", "[MASK]") is measured once per chain, and each prediction is
divided by it and renormalised (contextual calibration). By default (``calibrate=None``) it is on
for the base model and off under an adapter, by measurement: on the embedded model it lifts
zero- and few-shot accuracy well above the uncalibrated scores (see benchmarks/tasks.py), while
under an adapter trained on 144 SMS messages it dropped test accuracy from 0.905 to 0.19 (a
trained adapter's content-free prior is not a bias to remove). ``True``/``False`` force it.

Multi-label classification scores, for each label independently, "label: yes" against
"label: no" after the prompt; the probability of "yes" (calibrated the same way) is compared with
a threshold. Engines score continuations sharing a prefix ("label:") once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from castline.chains.base import Chain, Output
from castline.chains.structured import default_model
from castline.models.protocol import Capability, Continuation, Engine, Prompt
from castline.prompts.templates import PromptTemplate, load_template
from castline.schemas.errors import InvalidInputError, ModelOutputError, OutputTypeError
from castline.schemas.output_types import Labels, labels_of
from castline.schemas.results import Classification, MultiLabelClassification
from castline.schemas.settings import GenerationSettings

CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")
DEFAULT_INSTRUCTION = "Classify the user's text into exactly one of the labels."
DEFAULT_MULTI_INSTRUCTION = "Decide which of the labels apply to the user's text; any number may apply."


class TextInput(BaseModel):
    text: str = Field(description="the text to classify")


def as_labels(labels: Any, descriptions: Mapping[str, str] | None = None) -> Labels:
    """A ``Labels`` from a list, a ``{name: description}`` dict, an Enum, a Literal or ``Labels``."""
    if isinstance(labels, Mapping):
        return Labels(list(labels), [labels[k] or None for k in labels])
    found = labels_of(labels)
    if found is None:
        if isinstance(labels, str) or not isinstance(labels, Sequence):
            raise OutputTypeError(
                "labels must be a list of names, a {name: description} dict, an Enum or a Literal"
            )
        found = Labels(list(labels))
    if descriptions:
        unknown = set(descriptions) - set(found.names)
        if unknown:
            raise OutputTypeError(f"descriptions given for unknown labels {sorted(unknown)}")
        found = Labels(found.names, [descriptions.get(n) for n in found.names])
    return found


class _LabelChain(Chain[Output]):
    """What single- and multi-label classification share: labels, prompt, calibration."""

    default_template: str
    default_instruction: str

    def __init__(
        self,
        labels: Any,
        *,
        model: Engine | None = None,
        descriptions: Mapping[str, str] | None = None,
        examples: Sequence[Mapping[str, Any]] = (),
        instruction: str | None = None,
        template: str | Path | PromptTemplate | None = None,
        calibrate: bool | None = None,
    ) -> None:
        self.model = model or default_model()
        self.model.require(Capability.SCORE, type(self).__name__)
        self.labels = as_labels(labels, descriptions)
        self.settings = GenerationSettings()
        self.input_model = TextInput
        self.calibrate = calibrate  # None: on for the base model, off under an adapter
        self.template = load_template(template or self.default_template)
        self.partials = {
            "instruction": instruction or self.default_instruction,
            "labels": self.labels.for_template(),
            "examples": [self._check_example(dict(e), i) for i, e in enumerate(examples)],
        }
        self.template.check_variables(set(self.partials) | {"text"}, "a classification chain")
        self.continuations = self._continuations()
        # Context a prompt must leave free: the longest continuation and its end-of-turn token.
        self._room = max(self.model.count_tokens(c.text) for c in self.continuations) + 2
        self._prior: list[float] | None = None

    @property
    def calibrating(self) -> bool:
        """Whether predictions are calibrated now (``calibrate``, or by default: no adapter)."""
        return self.calibrate if self.calibrate is not None else self.adapter is None

    def _check_example(self, example: dict[str, Any], index: int) -> dict[str, Any]:
        raise NotImplementedError

    def adapter_payload(self) -> dict[str, Any]:
        return {"task": type(self).__name__, "labels": list(self.labels.names)}

    def _continuations(self) -> list[Continuation]:
        raise NotImplementedError

    def prompt_for(self, text: str) -> Prompt:
        """The exact prompt the labels are scored after."""
        return self.model.chat_prompt(self.template.render({**self.partials, "text": text}))

    def _log_scores(self, prompts: list[Prompt]) -> list[list[float]]:
        """Per-label log-scores after each rendered prompt."""
        raise NotImplementedError

    def _adapter_changed(self) -> None:
        self._prior = None  # the content-free prior belongs to the model as adapted

    def prior(self) -> list[float]:
        """Label log-scores for content-free inputs, measured once per chain."""
        if self._prior is None:
            rows = self._log_scores([self.prompt_for(t) for t in CONTENT_FREE_INPUTS])
            self._prior = [sum(column) / len(rows) for column in zip(*rows, strict=True)]
        return self._prior

    def _run_batch(self, inputs: list[dict[str, Any]], settings: GenerationSettings) -> list[Any]:
        prompts = [self.prompt_for(x["text"]) for x in inputs]
        fits = [self.model.prompt_length(p) + self._room <= self.model.max_context for p in prompts]
        fitting = [p for p, ok in zip(prompts, fits, strict=True) if ok]
        rows = iter(self._log_scores(fitting) if fitting else [])
        message = (
            f"text is too long for the model's context of {self.model.max_context} tokens with this "
            "prompt; shorten it or split it"
        )
        return [self._result(next(rows)) if ok else InvalidInputError(message) for ok in fits]

    def _result(self, row: list[float]) -> Any:
        raise NotImplementedError


class Classify(_LabelChain[Classification]):
    """Single-label classification returning ``Classification`` with every label's probability.

    >>> classify = Classify(["positive", "negative"])
    >>> result = classify.invoke("Great food, friendly staff.")
    >>> result.label, result.probabilities
    ('positive', {'positive': 0.784..., 'negative': 0.215...})

    Few-shot ``examples`` are ``{"text": ..., "label": ...}`` dicts, shown as earlier turns.
    """

    default_template = "classify"
    default_instruction = DEFAULT_INSTRUCTION

    @property
    def OutputType(self) -> type[Classification]:
        return Classification

    def _check_example(self, example: dict[str, Any], index: int) -> dict[str, Any]:
        if example.get("label") not in self.labels.names:
            raise InvalidInputError(
                f"example {index} has label {example.get('label')!r}, not one of {list(self.labels.names)}"
            )
        return example

    def _continuations(self) -> list[Continuation]:
        return [Continuation(n, end_of_turn=True) for n in self.labels.names]

    def _log_scores(self, prompts: list[Prompt]) -> list[list[float]]:
        return [log_softmax(row) for row in self.model.score(prompts, self.continuations, self.adapter)]

    def training_pair(self, input: dict[str, Any], output: Any) -> tuple[Prompt, str]:
        label = output.label if isinstance(output, Classification) else getattr(output, "value", output)
        if label not in self.labels.names:
            raise InvalidInputError(f"label {label!r} is not one of {list(self.labels.names)}")
        return self.prompt_for(input["text"]), str(label)

    def _result(self, row: list[float]) -> Classification:
        if self.calibrating:
            row = log_softmax([v - p for v, p in zip(row, self.prior(), strict=True)])
        probs = [math.exp(v) for v in row]
        best = max(range(len(probs)), key=probs.__getitem__)
        return Classification(
            label=self.labels.names[best],
            probabilities=dict(zip(self.labels.names, probs, strict=True)),
        )


class MultiLabelClassify(_LabelChain[MultiLabelClassification]):
    """Multi-label classification: an independent probability per label, and a threshold.

    >>> tag = MultiLabelClassify(["billing", "login", "bug"], threshold=0.5)
    >>> tag.invoke("I was charged twice and now I can't sign in").probabilities
    {'billing': 0.193..., 'login': 0.153..., 'bug': 0.184...}

    (The embedded 135M model is unsure here zero-shot, so ``labels`` is empty at 0.5; few-shot
    examples or an adapter are what move it.)

    Few-shot ``examples`` are ``{"text": ..., "labels": [...]}`` dicts.
    """

    default_template = "classify_multi"
    default_instruction = DEFAULT_MULTI_INSTRUCTION

    def __init__(self, labels: Any, *, threshold: float = 0.5, **kwargs: Any) -> None:
        if not 0.0 < threshold < 1.0:
            raise OutputTypeError(f"threshold must be between 0 and 1, not {threshold}")
        self.threshold = threshold
        super().__init__(labels, **kwargs)

    @property
    def OutputType(self) -> type[MultiLabelClassification]:
        return MultiLabelClassification

    def _check_example(self, example: dict[str, Any], index: int) -> dict[str, Any]:
        unknown = set(example.get("labels", ())) - set(self.labels.names)
        if "labels" not in example or unknown:
            raise InvalidInputError(f"example {index} needs 'labels' from {list(self.labels.names)}")
        return example

    def _continuations(self) -> list[Continuation]:
        return [
            Continuation(f"{n}: {answer}", end_of_turn=False)
            for n in self.labels.names
            for answer in ("yes", "no")
        ]

    def _log_scores(self, prompts: list[Prompt]) -> list[list[float]]:
        # log-odds of "yes" against "no" for every label (the shared "label:" cancels out)
        rows = self.model.score(prompts, self.continuations, self.adapter)
        return [[row[2 * i] - row[2 * i + 1] for i in range(len(self.labels.names))] for row in rows]

    def training_pair(self, input: dict[str, Any], output: Any) -> tuple[Prompt, str]:
        chosen = set(output.labels if isinstance(output, MultiLabelClassification) else output)
        unknown = chosen - set(self.labels.names)
        if unknown:
            raise InvalidInputError(f"labels {sorted(unknown)} are not in {list(self.labels.names)}")
        lines = [f"{n}: {'yes' if n in chosen else 'no'}" for n in self.labels.names]
        return self.prompt_for(input["text"]), "\n".join(lines)

    def _result(self, row: list[float]) -> MultiLabelClassification:
        if self.calibrating:
            row = [v - p for v, p in zip(row, self.prior(), strict=True)]
        probs = {n: 1.0 / (1.0 + math.exp(-float(v))) for n, v in zip(self.labels.names, row, strict=True)}
        chosen = sorted((n for n, p in probs.items() if p >= self.threshold), key=lambda n: -probs[n])
        return MultiLabelClassification(labels=chosen, probabilities=probs, threshold=self.threshold)


def log_softmax(values: Sequence[float]) -> list[float]:
    """Log-probabilities from log-scores (stable, no torch)."""
    if any(math.isnan(v) for v in values):
        raise ModelOutputError(f"the engine gave NaN log-probabilities: {list(values)}", "")
    top = max(values)
    if math.isinf(top):
        raise ModelOutputError(f"the engine gave no label a finite log-probability: {list(values)}", "")
    total = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - total for v in values]
