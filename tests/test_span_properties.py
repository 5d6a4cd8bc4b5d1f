"""Property: every entity and answer is an exact, non-empty, trimmed span of its input.

Hypothesis draws texts from pieces that have broken span decoders before: emoji, CJK, combining
characters, runs of spaces and tabs, line breaks, punctuation glued to words. Two tokenizer
families: byte-level BPE (SmolLM2's, under a tiny random model, whose meaningless weights wander
everywhere the rule allows) and SentencePiece with byte fallback (Gemma 3 in llama.cpp).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from castline.chains import AnswerQuestion, RecognizeEntities
from castline.schemas import CastlineError

PIECES = [
    "Ada", "Lovelace", "Zürich", "東京", "北京市", "😀", "🎓", "👩‍🔬", "e\u0301", "Ñandú", "naïve",
    " ", "  ", "   ", "\t", "\n", ".", ",", "!", "'s", "-", "(", ")", "42", "3.14", "x",
]  # fmt: skip
TEXTS = st.lists(st.sampled_from(PIECES), min_size=1, max_size=14).map("".join)


def check_spans(text: str, spans) -> None:
    for span in spans:
        assert 0 <= span.start < span.end <= len(text), (text, span)
        assert text[span.start : span.end] == span.text, (text, span)
        assert span.text == span.text.strip(), (text, span)


def run_properties(engine, text: str) -> None:
    ner = RecognizeEntities(["person", "place"], model=engine, max_new_tokens=40)
    qa = AnswerQuestion(model=engine, max_new_tokens=24)
    entities, answer = (
        ner.batch([text], return_exceptions=True)[0],
        qa.batch([{"question": "Who or where?", "context": text}], return_exceptions=True)[0],
    )
    for result in (entities, answer):
        # A typed error is allowed (whitespace-only context, budget reached); anything else is a bug.
        assert not isinstance(result, Exception) or isinstance(result, CastlineError), repr(result)
    if not isinstance(entities, Exception):
        check_spans(text, entities.entities)
    if not isinstance(answer, Exception) and answer.text:
        check_spans(text, [answer])


@settings(
    max_examples=30,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=TEXTS)
def test_spans_are_exact_with_byte_level_bpe(tiny_model, text):
    run_properties(tiny_model, text)


@pytest.mark.real_model
@settings(
    max_examples=12,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=TEXTS)
def test_spans_are_exact_with_sentencepiece(gemma_llamacpp, text):
    run_properties(gemma_llamacpp, text)
