"""Summarization: ``Summarize(max_words=60).invoke(text)`` returns a ``Summary``.

A text longer than ``window_tokens`` is summarized part by part, and the parts' summaries are
summarized together (again, until they fit one window): map, then reduce.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from castline.chains.text import TextChain
from castline.chains.windows import sentence_windows
from castline.models.protocol import Engine
from castline.prompts.templates import PromptTemplate
from castline.schemas.errors import InvalidInputError, ModelOutputError
from castline.schemas.results import Summary
from castline.schemas.settings import GenerationSettings

DEFAULT_INSTRUCTION = "Summarize the user's text: keep its main points, in its language."
MAX_ROUNDS = 8  # each round shortens the text to about one summary per window


class Summarize(TextChain[Summary]):
    """Summarize a text in at most ``max_words`` words (asked of the model, and its token budget).

    Args:
        max_words: the summary's length, held by the grammar (one paragraph ending a sentence).
        examples: few-shot ``{"text": ..., "summary": ...}`` dicts.
        window_tokens: longest text summarized in one pass; longer ones are summarized in parts.
    """

    output_key = "summary"
    sentence_end = True

    def __init__(
        self,
        *,
        max_words: int = 60,
        model: Engine | None = None,
        instruction: str | None = None,
        examples: Sequence[Mapping[str, Any]] = (),
        template: str | Path | PromptTemplate = "summarize",
        window_tokens: int = 1024,
        settings: GenerationSettings | None = None,
        **generation: Any,
    ) -> None:
        if max_words < 1 or 4 * max_words > window_tokens:
            raise InvalidInputError(
                f"max_words must be at least 1 and at most a quarter of window_tokens ({window_tokens}), "
                f"so that merged summaries shrink; got {max_words}"
            )
        self.max_words = max_words
        super().__init__(
            model=model,
            template=template,
            partials={"instruction": instruction or DEFAULT_INSTRUCTION, "max_words": max_words},
            examples=examples,
            window_tokens=window_tokens,
            settings=settings,
            generation=generation,
        )

    @property
    def OutputType(self) -> type[Summary]:
        return Summary

    def max_words_for(self, text: str) -> int:
        return self.max_words

    def _run_batch(self, inputs: list[dict[str, Any]], settings: GenerationSettings) -> list[Any]:
        results: list[Any] = [
            None if x["text"].strip() else InvalidInputError("there is no text to summarize") for x in inputs
        ]
        pending = {i: x["text"] for i, x in enumerate(inputs) if results[i] is None}
        windows = dict.fromkeys(pending, 0)
        for _ in range(MAX_ROUNDS):
            parts = [
                (i, text[s:e])
                for i, text in pending.items()
                for s, e in sentence_windows(text, self.model, self.window_tokens)
            ]
            written = self._write([p for _, p in parts], settings)
            by_item: dict[int, list[str]] = {}
            for (i, _), out in zip(parts, written, strict=True):
                if isinstance(out, Exception):
                    results[i] = results[i] or out
                else:
                    by_item.setdefault(i, []).append(out)
            following = {}
            for i in pending:
                if results[i] is not None:
                    continue
                windows[i] = windows[i] or len(by_item[i])
                if len(by_item[i]) == 1:
                    results[i] = Summary(summary=by_item[i][0], windows=windows[i])
                else:
                    following[i] = "\n".join(by_item[i])
            pending = following
            if not pending:
                break
        for i in pending:  # not reached while summaries are at most a quarter of a window
            results[i] = ModelOutputError("the parts' summaries did not shrink to one window", pending[i])
        return results
