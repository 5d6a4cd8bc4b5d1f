"""Extractive question answering: the answer is a span of the context, or an explicit "no answer".

    >>> qa = AnswerQuestion()
    >>> qa.invoke({"question": "Where was Ada born?", "context": "Ada was born in London."})
    Answer(text='London', start=16, end=22, score=0.87, context_index=0)

The answer is decoded under the span grammar (``castline.models.spans``), so ``text ==
context[start:end]`` by construction. Then the decoded span and the no-answer reply are scored
as complete replies after the same prompt (``castline.models.scoring``, per token so length does
not decide); ``score`` is the span's share of the two. With ``allow_no_answer=True`` the chain
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

import torch
from pydantic import BaseModel, Field

from castline.chains.base import Chain
from castline.chains.structured import default_model
from castline.chains.windows import split_windows
from castline.models.local import LocalModel
from castline.models.scoring import TokenTrie, score_candidates
from castline.models.spans import SpanProcessor, SpanState
from castline.prompts.templates import PromptTemplate, load_template
from castline.schemas.errors import InvalidInputError, TruncatedOutputError
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
        model: LocalModel | None = None,
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
        self._no_answer_tokens = self.model.tokenizer(NO_ANSWER, add_special_tokens=False).input_ids

    @staticmethod
    def _check_example(example: dict[str, Any], index: int) -> dict[str, Any]:
        answer, context = example.get("answer"), example.get("context")
        if not isinstance(context, str) or not example.get("question") or (answer and answer not in context):
            raise InvalidInputError(
                f"example {index} needs 'question', 'context' and an 'answer' found in the context (or None)"
            )
        return example

    def training_pair(self, input: dict[str, Any], output: Any) -> tuple[str, str]:
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

    def prompt_for(self, question: str, context: str) -> str:
        values = {**self.partials, "question": question, "context": context}
        return self.model.chat_prompt(self.template.render(values))

    def _run_batch(self, inputs: list[dict[str, Any]], settings: GenerationSettings) -> list[Any]:
        pieces = []  # (item, context index, window start, window text, question)
        for item, x in enumerate(inputs):
            contexts = [x["context"]] if isinstance(x["context"], str) else list(x["context"])
            if not contexts or not all(c.strip() for c in contexts):
                raise InvalidInputError("every context must be a non-empty string")
            for ci, context in enumerate(contexts):
                for start, end in split_windows(
                    context, self.model.tokenizer, self.window_tokens, self.window_overlap
                ):
                    pieces.append((item, ci, start, context[start:end], x["question"]))
        prompts = [self.prompt_for(q, w) for _, _, _, w, q in pieces]
        states = [SpanState(w, None, max_span_tokens=self.max_answer_tokens) for _, _, _, w, _ in pieces]
        budget = settings.max_new_tokens or 64
        processor = SpanProcessor(self.model.vocabulary_trie(), states, self.model.tokenizer.eos_token_id, ())
        generations = self.model.generate(
            prompts, settings=settings.merged({"max_new_tokens": budget}), processor=processor
        )
        processor.finish([g.complete for g in generations])
        best: dict[int, Answer | Exception] = {}
        for (item, ci, offset, _, _), prompt, state, generation in zip(
            pieces, prompts, states, generations, strict=True
        ):
            if not generation.complete or not state.spans:
                best.setdefault(item, TruncatedOutputError(generation.text, budget))
                continue
            start, end, _ = state.spans[0]
            p_span = self._span_share(prompt, list(generation.token_ids))
            candidate = Answer(
                text=state.text[start:end],
                start=offset + start,
                end=offset + end,
                score=p_span,
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

    def _span_share(self, prompt: str, span_tokens: list[int]) -> float:
        """How much likelier the span reply is than the no-answer reply, as a probability.

        Both replies are scored under the unconstrained model, per token: a long span has a lower
        total probability than a short reply just for its length, which would bias the choice.
        """
        eos = self.model.tokenizer.eos_token_id
        candidates = [[*span_tokens, eos], [*self._no_answer_tokens, eos]]
        scores, _ = score_candidates(self.model, [prompt], TokenTrie.build(candidates))
        per_token = scores[0] / torch.tensor([len(c) for c in candidates], dtype=scores.dtype)
        share = torch.softmax(per_token, dim=0)[0].item()
        return float(min(1.0, max(0.0, share))) if not math.isnan(share) else 0.0
