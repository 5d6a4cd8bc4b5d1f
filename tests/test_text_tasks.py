"""Summarize and Translate: free text, windowed long inputs, typed errors, metrics, converters."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from castline.chains import Summarize, Translate
from castline.chains.windows import sentence_windows
from castline.evaluation.metrics import rouge_scores, translation_scores
from castline.models import FakeEngine, GenerationRequest
from castline.schemas import InvalidInputError, TruncatedOutputError
from castline.schemas.results import Summary, Translation

TEXT = "Ada Lovelace wrote the first program. She worked with Charles Babbage.\n\nThey met in London."

words = st.text(alphabet=string.ascii_letters + "éü東京", min_size=1, max_size=30)
separators = st.sampled_from([" ", "  ", ". ", "! ", "? ", ".\n\n", "\n", ".\t"])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.tuples(words, separators), min_size=1, max_size=40), st.integers(8, 80))
def test_sentence_windows_partition_the_text_with_only_whitespace_between(pieces, max_tokens):
    text = "".join(w + s for w, s in pieces)
    engine = FakeEngine()  # its tokens are bytes
    windows = sentence_windows(text, engine, max_tokens)
    cursor = 0
    for start, end in windows:
        assert cursor <= start < end
        assert text[cursor:start].strip() == ""  # nothing but whitespace is left out
        assert text[start:end] == text[start:end].strip()
        assert engine.count_tokens(text[start:end]) <= max_tokens
        cursor = end
    assert text[cursor:].strip() == ""


def _echo_last_message(request: GenerationRequest) -> str:
    """The fake 'translates' by upper-casing the part it was given (the prompt's last message)."""
    return request.prompt.text.rsplit("<user>\n", 1)[-1].removesuffix("\n<assistant>\n").upper()


def test_translate_joins_its_parts_with_the_whitespace_between_them():
    chain = Translate("French", model=FakeEngine(outputs=_echo_last_message), window_tokens=40)
    result = chain.invoke(TEXT)
    assert isinstance(result, Translation) and result.target_language == "French"
    assert result.translation == TEXT.upper()  # part by part, separators kept (the paragraph break)
    assert result.to_pipeline() == {"translation_text": result.translation}


def test_summarize_merges_the_summaries_of_a_long_texts_parts():
    engine = FakeEngine(outputs=["A summary."])
    chain = Summarize(max_words=5, model=engine, window_tokens=120)
    long_text = " ".join(f"Sentence number {i} says something." for i in range(40))
    result = chain.invoke(long_text)
    assert isinstance(result, Summary) and result.summary == "A summary." and result.windows > 1
    assert len(engine.requests) > result.windows  # the parts, then their summaries merged
    assert result.to_pipeline() == {"summary_text": "A summary."}


def test_text_tasks_fail_per_item_with_typed_errors():
    chain = Summarize(
        max_words=5, model=FakeEngine(outputs=["One two three."]), window_tokens=200, max_new_tokens=4
    )
    results = chain.batch(["", "Some text to summarize."], return_exceptions=True)
    assert isinstance(results[0], InvalidInputError)
    assert isinstance(results[1], TruncatedOutputError)  # cut by the budget: an error, not a short summary
    with pytest.raises(InvalidInputError, match="quarter of window_tokens"):
        Summarize(max_words=500, model=FakeEngine())
    with pytest.raises(InvalidInputError, match="target_language"):
        Translate("", model=FakeEngine())
    with pytest.raises(InvalidInputError, match="needs a 'text' and a 'translation'"):
        Translate("German", model=FakeEngine(), examples=[{"text": "hi"}])


def test_the_grammar_holds_the_length_and_ends_a_summary_at_a_sentence_end():
    # The fake walks the grammar at random: whatever it writes, the shape holds.
    for seed in range(5):
        summary = Summarize(max_words=6, model=FakeEngine(seed=seed), window_tokens=200).invoke(TEXT)
        words = summary.summary.split()
        assert (
            1 <= len(words) <= 6
            and len(summary.summary.split(" ")) == len(words)
            and summary.summary[-1] in ".!?。！？"
            and "\n" not in summary.summary
        )
        translation = Translate("German", model=FakeEngine(seed=seed)).invoke("Good morning.")
        assert len(translation.translation.split()) <= 2 * 2 + 8


def test_a_training_target_the_grammar_cannot_write_is_refused():
    chain = Summarize(max_words=5, model=FakeEngine(), window_tokens=200)
    prompt, target = chain.training_pair({"text": TEXT}, " Ada wrote a program. ")
    assert target == "Ada wrote a program." and TEXT in prompt.text
    with pytest.raises(InvalidInputError, match="at most 5 words ending a sentence"):
        chain.training_pair({"text": TEXT}, "Ada Lovelace wrote the very first program.")
    with pytest.raises(InvalidInputError, match="cannot be written"):
        chain.training_pair({"text": TEXT}, "No full stop")
    translate = Translate("French", model=FakeEngine())
    assert translate.training_pair({"text": "Good morning"}, "Bonjour")[1] == "Bonjour"
    with pytest.raises(InvalidInputError, match="one line"):
        translate.training_pair({"text": "Good morning"}, "Bon\njour")


def test_rouge_and_translation_metrics():
    assert rouge_scores(["the cat sat"], ["the cat sat"]) == {
        "rouge1": 100.0,
        "rouge2": 100.0,
        "rougeL": 100.0,
    }
    assert rouge_scores(["the cat sat"], [None])["rouge1"] == 0.0
    perfect = translation_scores(["le chat est assis"], ["le chat est assis"])
    assert perfect == {"chrf": 100.0, "bleu": 100.0}
    assert translation_scores(["le chat est assis"], [None])["chrf"] == 0.0


@pytest.mark.real_model
def test_summarize_and_translate_on_the_embedded_model():
    from castline.models.loading import load_model

    model = load_model()
    summary = Summarize(max_words=40, model=model).invoke(TEXT)
    assert isinstance(summary, Summary) and summary.summary.strip()
    translation = Translate("French", model=model).invoke("Good morning. The weather is nice today.")
    assert isinstance(translation, Translation) and translation.translation.strip()
