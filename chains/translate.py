"""Translation: ``Translate("French").invoke(text)`` returns a ``Translation``.

A text longer than ``window_tokens`` is translated in parts of whole sentences, joined with the
whitespace that separated them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from castline.chains.text import TextChain
from castline.chains.windows import sentence_windows
from castline.models.protocol import Engine
from castline.prompts.templates import PromptTemplate
from castline.schemas.errors import InvalidInputError
from castline.schemas.results import Translation
from castline.schemas.settings import GenerationSettings

DEFAULT_INSTRUCTION = "You translate the user's text faithfully, keeping names and numbers as they are."


class Translate(TextChain[Translation]):
    """Translate into ``target_language`` (a language name, as the model should read it: "French").

    Args:
        target_language: the language to translate into.
        source_language: the text's language, when known (the prompt then names it).
        examples: few-shot ``{"text": ..., "translation": ...}`` dicts.
        window_tokens: longest part translated in one pass. A part's translation may have twice its
            words plus 8.
    """

    output_key = "translation"
    sentence_end = False

    def __init__(
        self,
        target_language: str,
        *,
        source_language: str | None = None,
        model: Engine | None = None,
        instruction: str | None = None,
        examples: Sequence[Mapping[str, Any]] = (),
        template: str | Path | PromptTemplate = "translate",
        window_tokens: int = 256,
        settings: GenerationSettings | None = None,
        **generation: Any,
    ) -> None:
        if not isinstance(target_language, str) or not target_language.strip():
            raise InvalidInputError("target_language must name a language, e.g. 'French'")
        self.target_language, self.source_language = target_language, source_language
        super().__init__(
            model=model,
            template=template,
            partials={
                "instruction": instruction or DEFAULT_INSTRUCTION,
                "target_language": target_language,
                "source_language": source_language,
            },
            examples=examples,
            window_tokens=window_tokens,
            settings=settings,
            generation=generation,
        )

    @property
    def OutputType(self) -> type[Translation]:
        return Translation

    def max_words_for(self, text: str) -> int:
        # Twice the source's words and 8 more: room for any language pair, not for a model that
        # runs on.
        return 2 * len(text.split()) + 8

    def _run_batch(self, inputs: list[dict[str, Any]], settings: GenerationSettings) -> list[Any]:
        texts = [x["text"] for x in inputs]
        parts = [
            (i, s, e)
            for i, text in enumerate(texts)
            for s, e in sentence_windows(text, self.model, self.window_tokens)
        ]
        written = self._write([texts[i][s:e] for i, s, e in parts], settings)
        results: list[Any] = [
            None if text.strip() else InvalidInputError("there is no text to translate") for text in texts
        ]
        pieces: dict[int, list[str]] = {}
        last_end: dict[int, int] = {}
        for (i, start, end), out in zip(parts, written, strict=True):
            if isinstance(out, Exception):
                results[i] = results[i] or out
                continue
            # The whitespace between two parts (a space, a paragraph break) joins their translations.
            between = texts[i][last_end[i] : start] if i in last_end else ""
            pieces.setdefault(i, []).append(between + out)
            last_end[i] = end
        for i in range(len(texts)):
            if results[i] is None:
                results[i] = Translation(
                    translation="".join(pieces[i]),
                    target_language=self.target_language,
                    source_language=self.source_language,
                )
        return results
