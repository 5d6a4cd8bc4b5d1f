"""Extractive question answering: the answer is a span of the context, or an explicit "no answer".

    >>> qa = AnswerQuestion()
    >>> qa.invoke({"question": "Where was Ada born?", "context": "Ada was born in London."})
    Answer(text='Ada was born in London.', start=0, end=23, score=0.667..., context_index=0)

(the embedded 135M model copies too much zero-shot; a span is all it can return.)

The answer is decoded under the span rule (``SpanConstraint``), so ``text ==
context[start:end]`` by construction. Then the decoded span and the no-answer reply are scored
as complete replies after the same prompt (``Engine.score``, per token so length does not
decide); ``score`` is the span's share of the two. With ``allow_no_answer=True`` the chain
answers "no answer" when that reply is likelier; with False (the default, as in SQuAD v1) it
always returns the best span. The embedded 135M model over-predicts "no answer", so turn it on
with a larger model or after fine-tuning.

When no ``examples`` are given, two short built-in demonstrations (``DEFAULT_EXAMPLES``) show the
model the reply format -- a short copied span, or the no-answer reply; pass ``examples=[]`` with
``default_examples=False`` to turn them off.

``context`` may be a list: one question over several contexts is one batch, and the likeliest
span wins (``context_index`` says where). Several questions over one context are a ``batch``.
Long contexts are split into overlapping windows of ``window_tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from castline.chains.base import Chain, token_budget
from castline.chains.structured import default_model
from castline.chains.windows import split_windows
from castline.models.protocol import Capability, Continuation, Engine, Prompt, SpanConstraint
from castline.prompts.templates import PromptTemplate, load_template
from castline.schemas.errors import InvalidInputError, ModelOutputError, TruncatedOutputError
from castline.schemas.results import Answer
from castline.schemas.settings import GenerationSettings

NO_ANSWER = "The context does not say."
DEFAULT_INSTRUCTION = (
    "Answer the question with the shortest span copied exactly from the context. "
    f'If the context does not contain the answer, reply "{NO_ANSWER}"'
)


DEFAULT_EXAMPLES = (
    {
        "context": "The library opened in 1902 and holds 40,000 books. Its first director was Mary Hale.",
        "question": "Who was the first director of the library?",
        "answer": "Mary Hale",
    },
    {
        "context": "The river rises in the northern hills and flows 220 kilometres to the sea.",
        "question": "What fish live in the river?",
        "answer": None,
    },
)


class QAInput(BaseModel):
    question: str = Field(description="the question to answer")
    context: str | list[str] = Field(description="the passage (or passages) holding the answer")


class AnswerQuestion(Chain[Answer]):
    """Answer questions with spans of the given context(s); returns ``Answer``."""

    def __init__(
        self,
        *,
        model: Engine | None = None,
        allow_no_answer: bool = False,
        examples: Sequence[Mapping[str, Any]] = (),
        default_examples: bool = True,
        instruction: str | None = None,
        template: str | Path | PromptTemplate = "qa",
        max_answer_tokens: int = 24,
        window_tokens: int = 768,
        window_overlap: int = 128,
        settings: GenerationSettings | None = None,
        **generation: Any,
    ) -> None:
        self.model = model or default_model()
        self.model.require(Capability.SPANS, type(self).__name__)
        self.model.require(Capability.SCORE, type(self).__name__)
        self.allow_no_answer = allow_no_answer
        self.max_answer_tokens = max_answer_tokens
        self.settings = (settings or GenerationSettings()).merged(generation)
        self.input_model = QAInput
        self.template = load_template(template)
        if not examples and default_examples:
            examples = DEFAULT_EXAMPLES if allow_no_answer else DEFAULT_EXAMPLES[:1]
        self.partials = {
            "instruction": instruction or DEFAULT_INSTRUCTION,
            "no_answer": NO_ANSWER,
            "examples": [self._check_example(dict(e), i) for i, e in enumerate(examples)],
        }
        self.template.check_variables(set(self.partials) | {"question", "context"}, "a QA chain")
        self.window_tokens, self.window_overlap = window_tokens, window_overlap
        self._no_answer_tokens = self.model.count_tokens(NO_ANSWER) + 1  # with the end-of-turn token
        self.model.prepare(SpanConstraint(""))

    @staticmethod
    def _check_example(example: dict[str, Any], index: int) -> dict[str, Any]:
        answer, context = example.get("answer"), example.get("context")
        if not isinstance(context, str) or not example.get("question") or (answer and answer not in context):
            raise InvalidInputError(
                f"example {index} needs 'question', 'context' and an 'answer' found in the context (or None)"
            )
        return example

    def training_pair(self, input: dict[str, Any], output: Any) -> tuple[Prompt, str]:
        """Target: the answer span as decoded, or the no-answer reply."""
        context = input["context"]
        if not isinstance(context, str):
            raise InvalidInputError("train QA on one context per example")
        answer = output.text if isinstance(output, Answer) else output
        if answer is None:
            if not self.allow_no_answer:
                raise InvalidInputError("an example without an answer needs allow_no_answer=True")
            return self.prompt_for(input["question"], context), NO_ANSWER
        if answer not in context:
            raise InvalidInputError(f"answer {answer!r} is not in its context")
        return self.prompt_for(input["question"], context), answer

    @property
    def OutputType(self) -> type[Answer]:
        return Answer

    def prompt_for(self, question: str, context: str) -> Prompt:
        values = {**self.partials, "question": question, "context": context}
        return self.model.chat_prompt(self.template.render(values))

    def _run_batch(self, inputs: list[dict[str, Any]], settings: GenerationSettings) -> list[Any]:
        pieces = []  # (item, context index, window start, window text, question)
        best: dict[int, Answer | Exception] = {}
        for item, x in enumerate(inputs):
            contexts = [x["context"]] if isinstance(x["context"], str) else list(x["context"])
            if not contexts or not all(c.strip() for c in contexts):
                best[item] = InvalidInputError("every context must be a non-empty string")
                continue
            for ci, context in enumerate(contexts):
                for start, end in split_windows(context, self.model, self.window_tokens, self.window_overlap):
                    pieces.append((item, ci, start, context[start:end], x["question"]))
        prompts = [self.prompt_for(q, w) for _, _, _, w, q in pieces]
        budget = token_budget(settings, 64)
        constraints = [SpanConstraint(w, max_span_tokens=self.max_answer_tokens) for _, _, _, w, _ in pieces]
        generations = self._generate(prompts, constraints, settings, budget) if pieces else []
        for (item, ci, offset, window, _), prompt, generation in zip(
            pieces, prompts, generations, strict=True
        ):
            if isinstance(generation, Exception):
                best.setdefault(item, generation)
                continue
            if not generation.complete:
                best.setdefault(item, TruncatedOutputError(generation.text, budget))
                continue
            if not generation.spans:
                best.setdefault(
                    item, ModelOutputError("the model ended its reply without a span", generation.text)
                )
                continue
            span = generation.spans[0]
            candidate = Answer(
                text=window[span.start : span.end],
                start=offset + span.start,
                end=offset + span.end,
                score=self._span_share(prompt, generation.text),
                context_index=ci,
            )
            current = best.get(item)
            if current is None or isinstance(current, Exception) or candidate.score > current.score:
                best[item] = candidate
        results: list[Any] = []
        for item in range(len(inputs)):
            answer = best[item]
            if isinstance(answer, Answer) and self.allow_no_answer and answer.score < 0.5:
                answer = Answer(text=None, start=None, end=None, score=1 - answer.score, context_index=0)
            results.append(answer)
        return results

    def _span_share(self, prompt: Prompt, reply: str) -> float:
        """How much likelier the span reply is than the no-answer reply, as a probability.

        Both replies are scored under the unconstrained model, per token: a long span has a lower
        total probability than a short reply just for its length, which would bias the choice.
        """
        candidates = [Continuation(reply), Continuation(NO_ANSWER)]
        scores = self.model.score([prompt], candidates, self.adapter)[0]
        lengths = [self.model.count_tokens(reply) + 1, self._no_answer_tokens]
        per_token = [s / n for s, n in zip(scores, lengths, strict=True)]
        top = max(per_token)
        if math.isnan(top):
            return 0.0
        share = math.exp(per_token[0] - top) / sum(math.exp(v - top) for v in per_token)
        return float(min(1.0, max(0.0, share)))
