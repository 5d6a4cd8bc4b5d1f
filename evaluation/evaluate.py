"""``evaluate(chain, data)``: run a chain over labeled data and report the task's metrics.

Items are sent in batches; a progress bar goes to stderr on long runs. An item whose output is
an error (e.g. truncated) counts as wrong and is counted in ``errors``, never dropped.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, Field
from tqdm import tqdm

from castline.evaluation.metrics import (
    accuracy,
    entity_prf,
    field_accuracy,
    macro_f1,
    per_label_prf,
    per_type_prf,
    rouge_scores,
    squad_scores,
    translation_scores,
)
from castline.evaluation.readers import ExtractionExample, LabeledText, QAExample, TaggedSentence, TextPair


class Report(BaseModel):
    """Metrics of one evaluation run."""

    task: str
    n: int = Field(description="examples evaluated")
    metrics: dict[str, float]
    errors: int = Field(0, description="examples whose output was an error (counted as wrong)")
    error_kinds: dict[str, int] = Field(
        default_factory=dict, description="errors by type, e.g. TruncatedOutputError"
    )
    seconds: float = Field(description="wall time of the run")
    per_label: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="precision, recall, f1 and support of each label / entity type"
    )

    def summary(self) -> str:
        figures = ", ".join(f"{k} {v:.3f}" for k, v in self.metrics.items())
        kinds = (
            f" ({', '.join(f'{k}: {v}' for k, v in sorted(self.error_kinds.items()))})" if self.errors else ""
        )
        lines = [f"{self.task}: n={self.n}, {figures}, errors {self.errors}{kinds}, {self.seconds:.1f} s"]
        if self.per_label:
            width = max(len(label) for label in self.per_label)
            lines.append(f"  {'':{width}}  precision  recall     f1  support")
            for label, row in self.per_label.items():
                lines.append(
                    f"  {label:{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}"
                    f"  {int(row['support']):7d}"
                )
        return "\n".join(lines)


def run_batched(
    call: Callable[[list[Any]], list[Any]], inputs: Sequence[Any], batch_size: int, desc: str
) -> list[Any]:
    """``call`` over ``inputs`` in batches, with a progress bar on stderr when there are several."""
    outputs: list[Any] = []
    with tqdm(total=len(inputs), desc=desc, file=sys.stderr, disable=len(inputs) <= batch_size) as bar:
        for start in range(0, len(inputs), batch_size):
            chunk = list(inputs[start : start + batch_size])
            outputs.extend(call(chunk))
            bar.update(len(chunk))
    return outputs


def _report(
    task: str,
    chain: Any,
    inputs: list[Any],
    batch_size: int,
    score: Callable[[list[Any]], dict[str, float]],
    per_label: Callable[[list[Any]], dict[str, dict[str, float]]] | None = None,
) -> Report:
    """Run ``chain`` over ``inputs`` in batches (errors kept in place) and score the outputs."""
    started = time.perf_counter()
    outputs = run_batched(lambda xs: chain.batch(xs, return_exceptions=True), inputs, batch_size, task)
    return Report(
        task=task,
        n=len(inputs),
        metrics=score(outputs),
        per_label=per_label(outputs) if per_label else {},
        errors=sum(isinstance(o, Exception) for o in outputs),
        error_kinds=dict(Counter(type(o).__name__ for o in outputs if isinstance(o, Exception))),
        seconds=time.perf_counter() - started,
    )


def evaluate_classify(chain: Any, data: Sequence[LabeledText], batch_size: int = 16) -> Report:
    gold, labels = [x.label for x in data], list(chain.labels.names)

    def predicted(outputs: list[Any]) -> list[str]:
        return ["" if isinstance(o, Exception) else o.label for o in outputs]

    def score(outputs: list[Any]) -> dict[str, float]:
        guesses = predicted(outputs)
        return {"accuracy": accuracy(gold, guesses), "macro_f1": macro_f1(gold, guesses, labels)}

    return _report(
        "classify",
        chain,
        [{"text": x.text} for x in data],
        batch_size,
        score,
        lambda outputs: per_label_prf(gold, predicted(outputs), labels),
    )


def evaluate_ner(chain: Any, data: Sequence[TaggedSentence], batch_size: int = 8) -> Report:
    gold = [set(x.entities) for x in data]

    def predicted(outputs: list[Any]) -> list[set[tuple[int, int, str]]]:
        return [
            set() if isinstance(o, Exception) else {(e.start, e.end, e.label) for e in o.entities}
            for o in outputs
        ]

    return _report(
        "ner",
        chain,
        [{"text": x.text} for x in data],
        batch_size,
        lambda outputs: entity_prf(gold, predicted(outputs)),
        lambda outputs: per_type_prf(gold, predicted(outputs)),
    )


def evaluate_qa(chain: Any, data: Sequence[QAExample], batch_size: int = 8) -> Report:
    def score(outputs: list[Any]) -> dict[str, float]:
        predicted = [None if isinstance(o, Exception) else o.text for o in outputs]
        return squad_scores([[a for a, _ in x.answers] for x in data], predicted)

    inputs = [{"question": x.question, "context": x.context} for x in data]
    return _report("qa", chain, inputs, batch_size, score)


def evaluate_extract(chain: Any, data: Sequence[ExtractionExample], batch_size: int = 4) -> Report:
    def score(outputs: list[Any]) -> dict[str, float]:
        predicted = [o.model_dump() if isinstance(o, BaseModel) else None for o in outputs]
        return field_accuracy([x.output for x in data], predicted)

    return _report("extract", chain, [{"text": x.text} for x in data], batch_size, score)


def evaluate_text_pairs(chain: Any, data: Sequence[TextPair], batch_size: int = 4) -> Report:
    """Summaries against reference summaries (ROUGE), translations against references (chrF, BLEU)."""
    from castline.chains.summarize import Summarize

    summaries = isinstance(chain, Summarize)

    def score(outputs: list[Any]) -> dict[str, float]:
        written = [
            None if isinstance(o, Exception) else o.summary if summaries else o.translation for o in outputs
        ]
        references = [x.reference for x in data]
        return rouge_scores(references, written) if summaries else translation_scores(references, written)

    task = "summarize" if summaries else "translate"
    return _report(task, chain, [{"text": x.text} for x in data], batch_size, score)


# The figure that ranks adapters for each task (higher is better).
PRIMARY_METRICS = {
    "classify": "accuracy",
    "ner": "f1",
    "qa": "f1",
    "extract": "field_accuracy",
    "summarize": "rougeL",
    "translate": "chrf",
}


def primary_metric(task: str) -> str:
    return PRIMARY_METRICS[task]


def evaluate(chain: Any, data: Sequence[Any], batch_size: int | None = None) -> Report:
    """Evaluate ``chain`` on ``data``; the task follows from the records' type."""
    if not data:
        raise ValueError("no data to evaluate")
    first = data[0]
    for record_type, fn in (
        (LabeledText, evaluate_classify),
        (TaggedSentence, evaluate_ner),
        (QAExample, evaluate_qa),
        (ExtractionExample, evaluate_extract),
        (TextPair, evaluate_text_pairs),
    ):
        if isinstance(first, record_type):
            return fn(chain, data, batch_size) if batch_size else fn(chain, data)
    raise TypeError(f"no evaluation for records of type {type(first).__name__}")
