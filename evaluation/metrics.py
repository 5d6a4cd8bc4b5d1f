"""Metrics: accuracy and macro-F1, entity-level strict P/R/F1, SQuAD EM/F1, field accuracy, ROUGE
for summaries (``rouge-score``) and chrF / BLEU for translations (``sacrebleu``)."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any


def accuracy(gold: Sequence[str], predicted: Sequence[str]) -> float:
    return sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold) if gold else 0.0


def macro_f1(gold: Sequence[str], predicted: Sequence[str], labels: Iterable[str] | None = None) -> float:
    """Unweighted mean of per-label F1 over ``labels`` (default: every label in gold or predicted)."""
    classes = sorted(set(labels) if labels is not None else set(gold) | set(predicted))
    scores = []
    for c in classes:
        tp = sum(g == c and p == c for g, p in zip(gold, predicted, strict=True))
        fp = sum(g != c and p == c for g, p in zip(gold, predicted, strict=True))
        fn = sum(g == c and p != c for g, p in zip(gold, predicted, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def entity_prf(
    gold: Sequence[Iterable[tuple[int, int, str]]], predicted: Sequence[Iterable[tuple[int, int, str]]]
) -> dict[str, float]:
    """Strict entity-level precision/recall/F1 (CoNLL/seqeval): a hit needs equal span and type."""
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, predicted, strict=True):
        gs, ps = set(g), set(p)
        tp += len(gs & ps)
        n_gold += len(gs)
        n_pred += len(ps)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": float(n_gold)}


def per_label_prf(
    gold: Sequence[str], predicted: Sequence[str], labels: Iterable[str]
) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support (gold count) of every label, as spaCy's report lists them."""
    pairs = list(zip(gold, predicted, strict=True))
    return {
        c: _prf(
            sum(g == p == c for g, p in pairs), sum(p == c for _, p in pairs), sum(g == c for g, _ in pairs)
        )
        for c in sorted(labels)
    }


def per_type_prf(
    gold: Sequence[Iterable[tuple[int, int, str]]], predicted: Sequence[Iterable[tuple[int, int, str]]]
) -> dict[str, dict[str, float]]:
    """Strict entity precision/recall/F1 and support of every entity type."""
    counts: dict[str, list[int]] = {}  # type -> [hits, predicted, gold]
    for g, p in zip(gold, predicted, strict=True):
        gs, ps = set(g), set(p)
        for entity in gs | ps:
            row = counts.setdefault(entity[2], [0, 0, 0])
            row[0] += entity in gs and entity in ps
            row[1] += entity in ps
            row[2] += entity in gs
    return {label: _prf(*counts[label]) for label in sorted(counts)}


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_scores(gold: Sequence[Sequence[str]], predicted: Sequence[str | None]) -> dict[str, float]:
    """Exact match and token F1, each the max over an example's gold answers, averaged (0-100)."""
    em = f1 = 0.0
    for answers, pred in zip(gold, predicted, strict=True):
        pred_text = pred or ""
        if not answers:  # unanswerable: only "no answer" is right
            em += float(not pred_text)
            f1 += float(not pred_text)
            continue
        em += max(float(normalize_answer(a) == normalize_answer(pred_text)) for a in answers)
        f1 += max(_token_f1(a, pred_text) for a in answers)
    n = len(gold) or 1
    return {"exact_match": 100 * em / n, "f1": 100 * f1 / n}


def _token_f1(gold: str, predicted: str) -> float:
    g, p = normalize_answer(gold).split(), normalize_answer(predicted).split()
    common = Counter(g) & Counter(p)
    same = sum(common.values())
    if not g or not p:
        return float(g == p)
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def normalize_field(value: Any) -> str:
    """Whitespace- and punctuation-insensitive form of a field value, for per-field matching."""
    text = "" if value is None else str(value)
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def field_accuracy(
    gold: Sequence[dict[str, Any]], predicted: Sequence[dict[str, Any] | None]
) -> dict[str, float]:
    """Exact match per field after normalisation, and their mean under ``field_accuracy``."""
    fields = sorted({k for g in gold for k in g})
    per_field = {}
    for name in fields:
        hits = sum(
            p is not None and normalize_field(g.get(name)) == normalize_field(p.get(name))
            for g, p in zip(gold, predicted, strict=True)
        )
        per_field[name] = hits / len(gold) if gold else 0.0
    mean = sum(per_field.values()) / len(per_field) if per_field else 0.0
    return {"field_accuracy": mean, **per_field}


def _metric_package(name: str) -> Any:
    import importlib

    from castline.schemas.errors import UserError

    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"this metric needs {name}: pip install 'castline[eval]'") from None


def rouge_scores(references: Sequence[str], predicted: Sequence[str | None]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measure in percent (Porter stemming, as the ROUGE-1.5.5
    defaults most papers report); a missing summary scores 0."""
    rouge_scorer = _metric_package("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = Counter[str]()
    for reference, summary in zip(references, predicted, strict=True):
        if summary is None:
            continue
        for name, score in scorer.score(reference, summary).items():
            totals[name] += score.fmeasure
    n = len(references) or 1
    return {name: round(100 * totals[name] / n, 2) for name in ("rouge1", "rouge2", "rougeL")}


def translation_scores(references: Sequence[str], predicted: Sequence[str | None]) -> dict[str, float]:
    """Corpus chrF and BLEU (sacrebleu's defaults); a missing translation counts as empty."""
    sacrebleu = _metric_package("sacrebleu")
    hypotheses = [p or "" for p in predicted]
    return {
        "chrf": round(sacrebleu.corpus_chrf(hypotheses, [list(references)]).score, 2),
        "bleu": round(sacrebleu.corpus_bleu(hypotheses, [list(references)]).score, 2),
    }
