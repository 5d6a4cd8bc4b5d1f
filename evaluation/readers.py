"""Readers for labeled data: CSV/TSV, CoNLL (BIO or IOB1), SQuAD JSON, JSONL, and text pairs.

Each reader returns plain typed records and fails with a ``DataError`` naming the file, the line
and the problem; nothing is skipped silently.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from castline.schemas.errors import DataError

T = TypeVar("T")


@dataclass(frozen=True)
class LabeledText:
    text: str
    label: str


@dataclass(frozen=True)
class TaggedSentence:
    """A sentence as tokens, their character spans in ``text`` (tokens joined by spaces), and spans."""

    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    text: str
    token_spans: tuple[tuple[int, int], ...]
    entities: tuple[tuple[int, int, str], ...]  # (start, end, label) character spans


@dataclass(frozen=True)
class QAExample:
    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]  # (text, answer_start); empty when impossible


@dataclass(frozen=True)
class TextPair:
    """A text and the reference output written for it (a summary, a translation)."""

    text: str
    reference: str


@dataclass(frozen=True)
class ExtractionExample:
    text: str
    output: dict[str, Any] = field(default_factory=dict)


def read_labeled_csv(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    columns: Sequence[str] | None = None,
) -> list[LabeledText]:
    """A CSV (or TSV, by extension or sniffing) with a header naming the text and label columns.

    ``columns`` names the columns of a file without a header (the SMS Spam Collection is
    ``label<TAB>text``).
    """
    path = Path(path)
    raw = _read_text(path)
    first_line = raw.split("\n", 1)[0]
    delimiter = "\t" if path.suffix.lower() in {".tsv", ".tab"} or "\t" in first_line else ","
    # The reader gets the text as one stream: a quoted field may hold line breaks. A headerless
    # TSV is read without quoting: its texts hold bare quote characters.
    reader = csv.DictReader(
        io.StringIO(raw, newline=""),
        fieldnames=list(columns) if columns else None,
        delimiter=delimiter,
        quoting=csv.QUOTE_NONE if columns and delimiter == "\t" else csv.QUOTE_MINIMAL,
    )
    columns = reader.fieldnames or []
    for column in (text_column, label_column):
        if column not in columns:
            raise DataError(
                f"{path}: line 1: no column {column!r} in the header {columns}; name it with an option"
            )
    rows = []
    for row in reader:
        text, label = row.get(text_column), row.get(label_column)
        if not text or not label:
            raise DataError(f"{path}: line {reader.line_num}: empty {text_column!r} or {label_column!r}")
        rows.append(LabeledText(text, label.strip()))
    if not rows:
        raise DataError(f"{path}: no rows after the header")
    return rows


def read_conll(path: str | Path) -> list[TaggedSentence]:
    """CoNLL-style: a token per line, the tag in the last column, blank lines between sentences.

    ``-DOCSTART-`` lines are skipped. BIO and IOB1 are both read: an ``I-`` tag that does not
    continue an entity of the same type starts one (IOB1), and ``B-`` always starts one.
    """
    path = Path(path)
    sentences: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("-DOCSTART-"):
            continue
        if not stripped:
            if tokens:
                sentences.append(_sentence(tokens, tags))
                tokens, tags = [], []
            continue
        parts = stripped.split()
        if len(parts) < 2:
            raise DataError(f"{path}: line {line_no}: expected 'token ... tag', got {stripped!r}")
        tag = parts[-1]
        if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
            raise DataError(f"{path}: line {line_no}: tag {tag!r} is not O, B-TYPE or I-TYPE")
        tokens.append(parts[0])
        tags.append(tag)
    if tokens:
        sentences.append(_sentence(tokens, tags))
    if not sentences:
        raise DataError(f"{path}: no sentences found")
    return sentences


def _sentence(tokens: list[str], tags: list[str]) -> TaggedSentence:
    spans, offset = [], 0
    for token in tokens:
        spans.append((offset, offset + len(token)))
        offset += len(token) + 1
    text = " ".join(tokens)
    entities = [(spans[s][0], spans[e - 1][1], label) for s, e, label in tag_chunks(tags)]
    return TaggedSentence(tuple(tokens), tuple(tags), text, tuple(spans), tuple(entities))


def tag_chunks(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """Entity chunks ``(first_token, end_token, label)`` of a BIO or IOB1 tag sequence."""
    chunks: list[tuple[int, int, str]] = []
    start, label = None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, kind = (tag[:1], tag[2:]) if tag != "O" else ("O", None)
        continues = prefix == "I" and kind == label and start is not None
        if start is not None and not continues:
            chunks.append((start, i, label))  # type: ignore[arg-type]
            start, label = None, None
        if prefix in ("B", "I") and not continues:
            start, label = i, kind
    return chunks


def read_squad(path: str | Path) -> list[QAExample]:
    """SQuAD v1.1 JSON; v2's ``is_impossible`` questions come back with no answers."""
    path = Path(path)
    try:
        data = json.loads(_read_text(path))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not SQuAD JSON (a top-level 'data' list): {exc}") from exc
    examples = []
    for article in data:
        for paragraph in article.get("paragraphs", []):
            context = paragraph["context"]
            for qa in paragraph.get("qas", []):
                answers = tuple((a["text"], int(a["answer_start"])) for a in qa.get("answers", []))
                for text, start in answers:
                    if context[start : start + len(text)] != text:
                        raise DataError(f"{path}: question {qa['id']}: answer {text!r} is not at {start}")
                if not answers and not qa.get("is_impossible", False):
                    raise DataError(
                        f"{path}: question {qa['id']} has no answers and is not marked impossible"
                    )
                examples.append(QAExample(str(qa["id"]), qa["question"], context, answers))
    if not examples:
        raise DataError(f"{path}: no questions found")
    return examples


def _json_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-empty line of a JSONL file."""
    for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {line_no}: invalid JSON: {exc.msg}") from exc
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {line_no}: expected a JSON object, not {type(record).__name__}")
        yield line_no, record


def read_jsonl(path: str | Path) -> list[ExtractionExample]:
    """JSONL lines ``{"text": ..., "output": {...}}``."""
    path = Path(path)
    examples = []
    for line_no, record in _json_objects(path):
        if not isinstance(record.get("text"), str) or not isinstance(record.get("output"), dict):
            raise DataError(f"{path}: line {line_no}: expected {{'text': str, 'output': object}}")
        examples.append(ExtractionExample(record["text"], record["output"]))
    if not examples:
        raise DataError(f"{path}: no records found")
    return examples


def read_text_pairs(path: str | Path, text_field: str, reference_field: str) -> list[TextPair]:
    """Texts and references: JSONL objects with the two fields, or a CSV/TSV with the two columns
    (a header row names them)."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        rows = list(_json_objects(path))
    else:
        raw = _read_text(path)
        delimiter = "\t" if path.suffix.lower() in {".tsv", ".tab"} or "\t" in raw.split("\n", 1)[0] else ","
        reader = csv.DictReader(io.StringIO(raw, newline=""), delimiter=delimiter)
        rows = [(i, dict(row)) for i, row in enumerate(reader, start=2)]
    pairs = []
    for line_no, record in rows:
        text, reference = record.get(text_field), record.get(reference_field)
        if (
            not isinstance(text, str)
            or not isinstance(reference, str)
            or not text.strip()
            or not reference.strip()
        ):
            raise DataError(
                f"{path}: line {line_no}: expected non-empty {text_field!r} and {reference_field!r} strings"
            )
        pairs.append(TextPair(text, reference))
    if not pairs:
        raise DataError(f"{path}: no records found")
    return pairs


def read_inputs(path: str | Path) -> list[dict[str, Any]]:
    """Unlabeled inputs for ``castline predict``: JSONL objects (the chain's input fields), or one
    text per non-empty line of any other file (``{"text": line}``)."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        inputs = [record for _, record in _json_objects(path)]
    else:
        inputs = [{"text": line} for line in _read_text(path).splitlines() if line.strip()]
    if not inputs:
        raise DataError(f"{path}: no inputs found")
    return inputs


def select(items: list[T], limit: int | None = None, sample: int | None = None, seed: int = 0) -> list[T]:
    """The first ``limit`` items, or a seeded random ``sample`` of them (order kept)."""
    if sample is not None:
        if sample > len(items):
            raise DataError(f"asked for a sample of {sample} but the data has only {len(items)} items")
        picked = sorted(random.Random(seed).sample(range(len(items)), sample))
        items = [items[i] for i in picked]
    if limit is not None:
        items = items[:limit]
    return items


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
