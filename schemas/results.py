"""Result types of the task chains: typed, validated, with probabilities and character offsets."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Classification(BaseModel):
    """One label chosen from a label set, with a probability for every label."""

    model_config = ConfigDict(frozen=True)

    label: str = Field(description="the most probable label")
    probabilities: dict[str, float] = Field(
        description="probability of every label, from the model's log-probabilities; sums to 1"
    )

    @property
    def score(self) -> float:
        """Probability of the chosen label."""
        return self.probabilities[self.label]

    def to_pipeline(self, top_k: int | None = None) -> list[dict[str, Any]]:
        """The ``transformers`` text-classification pipeline format: ``[{"label", "score"}]``, most
        probable first, every label (``top_k=None``, as the pipeline's) or the first ``top_k``."""
        return _ranked(self.probabilities, top_k)


class MultiLabelClassification(BaseModel):
    """Every label whose independent probability reaches the threshold."""

    model_config = ConfigDict(frozen=True)

    labels: list[str] = Field(description="labels at or above the threshold, most probable first")
    probabilities: dict[str, float] = Field(description="independent probability of each label")
    threshold: float = Field(description="the cut-off that chose `labels`")

    def to_pipeline(self, top_k: int | None = None) -> list[dict[str, Any]]:
        """The text-classification pipeline format with independent (sigmoid) scores, as the pipeline
        gives with ``function_to_apply="sigmoid", top_k=None``."""
        return _ranked(self.probabilities, top_k)


def _ranked(probabilities: dict[str, float], top_k: int | None) -> list[dict[str, Any]]:
    ranked = sorted(probabilities.items(), key=lambda item: -item[1])
    return [{"label": label, "score": score} for label, score in ranked[:top_k]]


class Entity(BaseModel):
    """A mention in the input: ``text == input[start:end]`` always holds."""

    model_config = ConfigDict(frozen=True)

    text: str = Field(description="the mention, exactly as it appears in the input")
    label: str = Field(description="entity type")
    start: int = Field(ge=0, description="character offset where the mention starts")
    end: int = Field(description="character offset just past the mention")
    score: float = Field(ge=0, le=1, description="probability the model gave the mention's tokens")

    @model_validator(mode="after")
    def _span_matches_text(self) -> Entity:
        if self.end - self.start != len(self.text):
            raise ValueError(f"offsets {self.start}:{self.end} do not span {self.text!r}")
        return self


class Entities(BaseModel):
    """All entities found in one text, in order of appearance."""

    model_config = ConfigDict(frozen=True)

    text: str = Field(description="the input the offsets refer to")
    entities: list[Entity] = Field(description="mentions, sorted by start offset")

    @model_validator(mode="after")
    def _offsets_point_into_text(self) -> Entities:
        for e in self.entities:
            if self.text[e.start : e.end] != e.text:
                raise ValueError(f"entity {e.text!r} is not at {e.start}:{e.end} of the input")
        return self

    def to_bio(self, tokens: list[tuple[int, int]] | None = None) -> list[tuple[str, str]]:
        """(token, tag) pairs in BIO tagging; tokens are whitespace-split unless spans are given."""
        spans = tokens if tokens is not None else whitespace_spans(self.text)
        tags = []
        for start, end in spans:
            tag = "O"
            for e in self.entities:
                if start < e.end and end > e.start:  # token overlaps the entity
                    tag = ("B-" if start <= e.start else "I-") + e.label
                    break
            tags.append((self.text[start:end], tag))
        return tags

    def to_pipeline(self) -> list[dict[str, Any]]:
        """The ``transformers`` token-classification pipeline format (aggregation "simple")."""
        return [
            {"entity_group": e.label, "score": e.score, "word": e.text, "start": e.start, "end": e.end}
            for e in self.entities
        ]


class Answer(BaseModel):
    """An extractive answer: a span of the context, or an explicit "no answer"."""

    model_config = ConfigDict(frozen=True)

    text: str | None = Field(description="the answer span, or None when the context has no answer")
    start: int | None = Field(description="character offset in the context, None for no answer")
    end: int | None = Field(description="offset just past the span, None for no answer")
    score: float = Field(ge=0, le=1, description="probability the model gave this outcome's tokens")
    context_index: int = Field(0, description="which of the given contexts holds the span")

    @property
    def has_answer(self) -> bool:
        return self.text is not None

    def to_pipeline(self) -> dict[str, Any]:
        """The question-answering pipeline format of transformers 4 (version 5 removed the task):
        ``{"score", "start", "end", "answer"}``; no answer is ``start == end == 0`` and ``""``, as
        the pipeline gives with ``handle_impossible_answer=True``."""
        if self.text is None:
            return {"score": self.score, "start": 0, "end": 0, "answer": ""}
        return {"score": self.score, "start": self.start, "end": self.end, "answer": self.text}


def whitespace_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the whitespace-separated tokens of ``text``."""
    spans, start = [], None
    for i, ch in enumerate(text):
        if ch.isspace():
            if start is not None:
                spans.append((start, i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        spans.append((start, len(text)))
    return spans


class Summary(BaseModel):
    """A summary of one text, written by the model."""

    model_config = ConfigDict(frozen=True)

    summary: str = Field(description="the summary")
    windows: int = Field(1, description="parts the text was summarized in before their summaries merged")

    def to_pipeline(self) -> dict[str, Any]:
        """The ``transformers`` summarization pipeline format: ``{"summary_text": ...}``."""
        return {"summary_text": self.summary}


class Translation(BaseModel):
    """A text translated into the target language, window by window for long inputs."""

    model_config = ConfigDict(frozen=True)

    translation: str = Field(description="the translated text")
    target_language: str = Field(description="the language it was translated into")
    source_language: str | None = Field(None, description="the source language, when it was given")

    def to_pipeline(self) -> dict[str, Any]:
        """The ``transformers`` translation pipeline format: ``{"translation_text": ...}``."""
        return {"translation_text": self.translation}
