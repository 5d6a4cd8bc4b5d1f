"""Task chains on the tiny random model: meaningless weights, but every guarantee must hold.

Probabilities cover every label and sum to 1; entities and answers are exact spans of their
input; extracted span fields are copied from the text; bad inputs are typed errors.
"""

from __future__ import annotations

import enum
import math
from typing import Literal

import numpy as np
import pytest
import torch
from pydantic import BaseModel, Field

from castline.chains.classify import Classify, MultiLabelClassify
from castline.chains.extract import Extract
from castline.chains.ner import RecognizeEntities
from castline.chains.qa import AnswerQuestion
from castline.models import Continuation, FakeEngine
from castline.schemas import InvalidInputError, OutputTypeError
from castline.schemas.results import Entities, Entity

TEXTS = [
    "Ada Lovelace met Charles Babbage in London in 1833.",
    "Paris, Paris and again Paris: the band played three nights.",
    "no entities here at all",
    "Apple hired Tim Cook; Cook later ran Apple from Cupertino.",
]
CONTEXT = "The Eiffel Tower was finished in 1889. It stands in Paris and is 330 metres tall."


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


@pytest.mark.parametrize(
    "labels",
    [
        ["card", "card_arrival", "cash"],
        {"spam": "ads", "ham": "normal"},
        Color,
        Literal["yes", "no", "maybe"],
    ],
)
@pytest.mark.parametrize("calibrate", [True, False])
def test_classification_probabilities_cover_every_label_and_sum_to_one(tiny_model, labels, calibrate):
    chain = Classify(labels, model=tiny_model, calibrate=calibrate)
    for result in chain.batch(TEXTS):
        assert set(result.probabilities) == set(chain.labels.names)
        assert math.isclose(sum(result.probabilities.values()), 1.0, abs_tol=1e-5)
        assert result.label == max(result.probabilities, key=result.probabilities.get)


def test_label_scores_equal_the_naive_full_sequence_log_probabilities(tiny_model):
    """The trie pass with a shared prefix cache computes exactly what one pass per label would."""
    labels = ["card", "card_arrival", "cash"]
    sequences = [[*tiny_model.encode_text(s), tiny_model.eos_id] for s in labels]
    prompts = [tiny_model.chat_prompt([{"role": "user", "content": t}]) for t in TEXTS]
    scores = tiny_model.score(prompts, [Continuation(s) for s in labels])
    for i, prompt in enumerate(prompts):
        ids = tiny_model.encode_prompt(prompt)
        for j, seq in enumerate(sequences):
            with torch.no_grad():
                logits = tiny_model.hf_model(torch.tensor([ids + seq])).logits[0].float()
            expected = sum(torch.log_softmax(logits[len(ids) - 1 + k], -1)[t] for k, t in enumerate(seq))
            assert scores[i][j] == pytest.approx(expected.item(), abs=1e-4)


def test_multi_label_gives_independent_probabilities_and_threshold(tiny_model):
    chain = MultiLabelClassify(["billing", "login", "bug"], model=tiny_model, threshold=0.3)
    result = chain.invoke("charged twice and cannot log in")
    assert set(result.probabilities) == {"billing", "login", "bug"}
    assert all(0 <= p <= 1 for p in result.probabilities.values())
    assert result.labels == sorted(
        [n for n, p in result.probabilities.items() if p >= 0.3], key=lambda n: -result.probabilities[n]
    )


def test_classification_rejects_bad_examples_and_labels(tiny_model):
    with pytest.raises(InvalidInputError, match="example 0"):
        Classify(["a", "b"], model=tiny_model, examples=[{"text": "x", "label": "c"}])
    with pytest.raises(OutputTypeError):
        Classify(["a", "a"], model=tiny_model)
    with pytest.raises(OutputTypeError):
        MultiLabelClassify(["a", "b"], model=tiny_model, threshold=1.5)


def test_entities_are_exact_spans_in_order_without_overlap(tiny_model):
    chain = RecognizeEntities(["person", "location", "organization"], model=tiny_model, max_new_tokens=200)
    for text, result in zip(TEXTS, chain.batch(TEXTS), strict=True):
        assert isinstance(result, Entities) and result.text == text
        previous_end = 0
        for entity in result.entities:
            assert text[entity.start : entity.end] == entity.text
            assert entity.text == entity.text.strip() and entity.text
            assert entity.label in ("person", "location", "organization")
            assert 0 <= entity.score <= 1
            assert entity.start >= previous_end
            previous_end = entity.end


def test_repeated_mentions_get_successive_offsets():
    text = "Paris, Paris and again Paris"
    found = Entities(
        text=text,
        entities=[Entity(text="Paris", label="location", start=s, end=s + 5, score=0.9) for s in (0, 7, 23)],
    )
    assert [e.start for e in found.entities] == [0, 7, 23]
    with pytest.raises(ValueError, match="not at"):
        Entities(text=text, entities=[Entity(text="Paris", label="location", start=1, end=6, score=0.5)])


def test_bio_and_pipeline_formats():
    text = "Ada Lovelace lives in New York"
    result = Entities(
        text=text,
        entities=[
            Entity(text="Ada Lovelace", label="person", start=0, end=12, score=0.9),
            Entity(text="New York", label="location", start=22, end=30, score=0.8),
        ],
    )
    assert [t for _, t in result.to_bio()] == ["B-person", "I-person", "O", "O", "B-location", "I-location"]
    assert result.to_pipeline()[1] == {
        "entity_group": "location",
        "score": 0.8,
        "word": "New York",
        "start": 22,
        "end": 30,
    }


def test_results_convert_to_the_transformers_pipeline_formats(tokenizer):
    """Key for key, type for type, order for order, against a real text-classification pipeline."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification, pipeline

    from castline.schemas.results import Answer, Classification, MultiLabelClassification

    labels = {0: "a", 1: "b", 2: "c"}
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
        num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()},
    )  # fmt: skip
    torch.manual_seed(0)
    classify = pipeline(
        "text-classification", model=LlamaForSequenceClassification(config), tokenizer=tokenizer
    )
    for function, result_type in (("softmax", Classification), ("sigmoid", MultiLabelClassification)):
        theirs = classify("hello there", top_k=None, function_to_apply=function)
        probabilities = {row["label"]: row["score"] for row in theirs}
        if result_type is Classification:
            ours = Classification(label=theirs[0]["label"], probabilities=probabilities)
        else:
            ours = MultiLabelClassification(labels=[], probabilities=probabilities, threshold=0.9)
        assert ours.to_pipeline() == theirs
        assert ours.to_pipeline(top_k=1) == theirs[:1]
    answer = Answer(text="London", start=19, end=25, score=0.5)
    assert answer.to_pipeline() == {"score": 0.5, "start": 19, "end": 25, "answer": "London"}
    none = Answer(text=None, start=None, end=None, score=0.7).to_pipeline()
    assert none == {"score": 0.7, "start": 0, "end": 0, "answer": ""}


def test_long_input_is_windowed_and_offsets_map_to_the_original(tiny_model):
    text = " ".join(f"word{i}" for i in range(300))
    chain = RecognizeEntities(
        ["thing"], model=tiny_model, window_tokens=64, window_overlap=16, max_new_tokens=160
    )
    result = chain.invoke(text)
    for entity in result.entities:
        assert text[entity.start : entity.end] == entity.text


@pytest.mark.parametrize("allow_no_answer", [True, False])
def test_answers_are_spans_of_the_context_or_explicitly_none(tiny_model, allow_no_answer):
    chain = AnswerQuestion(model=tiny_model, allow_no_answer=allow_no_answer)
    questions = ["When was it finished?", "Where is it?", "Who painted it?"]
    for answer in chain.batch([{"question": q, "context": CONTEXT} for q in questions]):
        assert 0 <= answer.score <= 1
        if answer.has_answer:
            assert CONTEXT[answer.start : answer.end] == answer.text
        else:
            assert allow_no_answer and answer.start is None and answer.end is None


def test_one_question_over_several_contexts(tiny_model):
    contexts = ["Rome is in Italy.", CONTEXT, "Berlin is in Germany."]
    answer = AnswerQuestion(model=tiny_model, allow_no_answer=False).invoke(
        {"question": "How tall is the tower?", "context": contexts}
    )
    assert contexts[answer.context_index][answer.start : answer.end] == answer.text


def test_qa_rejects_empty_context_and_bad_examples(tiny_model):
    chain = AnswerQuestion(model=tiny_model)
    with pytest.raises(InvalidInputError, match="non-empty"):
        chain.invoke({"question": "q", "context": ["  "]})
    with pytest.raises(InvalidInputError, match="example 0"):
        AnswerQuestion(model=tiny_model, examples=[{"question": "q", "context": "abc", "answer": "zzz"}])


class Receipt(BaseModel):
    company: str = Field(description="shop name")
    total: str = Field(description="amount paid")
    note: str | None = Field(None, description="any note")


def test_span_extraction_copies_every_field_from_the_text(tiny_model):
    texts = ["ABC TRADING  TOTAL 31.00  THANK YOU", "SHOP 2 PAID 9.99"]
    chain = Extract(Receipt, model=tiny_model, spans=True, max_new_tokens=120)
    for text, result in zip(texts, chain.batch(texts), strict=True):
        assert isinstance(result, Receipt)
        assert result.company in text and result.total in text
        assert result.note is None or result.note in text


def test_span_extraction_refuses_non_string_fields(tiny_model):
    class Bad(BaseModel):
        amount: float

    with pytest.raises(OutputTypeError, match="amount"):
        Extract(Bad, model=tiny_model, spans=True)


def test_json_extraction_of_many_records(tiny_model):
    class Tag(BaseModel):
        name: str = Field(pattern=r"^[a-z]{1,5}$")

    results = Extract(Tag, model=tiny_model, many=True, max_new_tokens=200).invoke("tags: a, b")
    assert isinstance(results, list) and all(isinstance(r, Tag) for r in results)


def test_ner_demonstrations_training_targets_and_the_decoder_write_the_same_lines():
    """A mention at offset 0 has no space to copy: "person:Ada"; mid-text ones do: "person: Bob"."""
    from castline.models.protocol import SpanConstraint

    example = {
        "text": "Ada met Bob in Paris.",
        "entities": [
            {"text": "Ada", "label": "person"},
            {"text": "Bob", "label": "person"},
            {"text": "Paris", "label": "location"},
        ],
    }
    engine = FakeEngine(outputs=["x"])
    chain = RecognizeEntities(["person", "location"], model=engine, examples=[example])
    expected = "person:Ada\nperson: Bob\nlocation: Paris"
    assert "<assistant>\n" + expected + "\n<user>" in chain.prompt_for("Ada met Bob.").text
    spans = [
        {"text": e["text"], "label": e["label"], "start": example["text"].index(e["text"]),
         "end": example["text"].index(e["text"]) + len(e["text"])}
        for e in example["entities"]
    ]  # fmt: skip
    assert chain.training_pair({"text": example["text"]}, spans)[1] == expected
    # The span decoder accepts exactly these lines, token by token (the fake's tokens are bytes).
    cursor = engine.token_table.cursor(SpanConstraint(example["text"], ("person", "location")))
    for byte in expected.encode():
        row = np.zeros(engine.token_table.size, dtype=bool)
        cursor.mask_into(row)
        assert row[byte], expected.encode()[: cursor.consumed]
        cursor.advance(byte)


def test_calibration_is_on_for_the_base_model_and_off_under_an_adapter_by_default():
    """Measured: under an adapter trained on SMS spam, calibration took accuracy from 0.905 to 0.19."""
    engine = FakeEngine(scores={"spam": -0.5, "ham": -1.0})
    engine.add_adapter("sms")
    chain = Classify(["spam", "ham"], model=engine)
    assert chain.calibrating
    chain.adapter = "sms"
    assert not chain.calibrating
    uncalibrated = Classify(["spam", "ham"], model=engine, calibrate=False).invoke("x").probabilities
    assert chain.invoke("x").probabilities == pytest.approx(uncalibrated)
    forced = Classify(["spam", "ham"], model=engine, calibrate=True)
    forced.adapter = "sms"
    assert forced.calibrating
