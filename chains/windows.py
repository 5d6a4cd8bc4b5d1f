"""Overlapping windows over long inputs, and merging span results back into the full text."""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable

from castline.models.protocol import Engine


def split_windows(text: str, engine: Engine, max_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """Character ranges covering ``text``, each at most ``max_tokens`` tokens, overlapping.

    Windows end at whitespace where one is near, so words are not cut in half; consecutive
    windows share about ``overlap`` tokens so a mention on a border is whole in one of them.
    """
    if max_tokens <= overlap:
        raise ValueError("a window must be longer than its overlap")
    offsets = engine.token_offsets(text)
    if len(offsets) <= max_tokens:
        return [(0, len(text))]
    windows, first = [], 0
    while True:
        last = min(first + max_tokens, len(offsets)) - 1
        start, end = offsets[first][0], offsets[last][1]
        if last < len(offsets) - 1:
            cut = text.rfind(" ", start, end)
            end = cut if cut > start + (end - start) // 2 else end
        windows.append((start, end))
        if last >= len(offsets) - 1:
            return windows
        first = max(first + 1, last + 1 - overlap)


def merge_spans(found: Iterable[tuple[int, int, str, float]]) -> list[tuple[int, int, str, float]]:
    """Spans from overlapping windows, deduplicated; of two overlapping spans the likelier stays."""
    kept: list[tuple[int, int, str, float]] = []
    for span in sorted(set(found), key=lambda s: -s[3]):
        if all(span[1] <= k[0] or span[0] >= k[1] for k in kept):
            kept.append(span)
    return sorted(kept)


_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def sentence_windows(text: str, engine: Engine, max_tokens: int) -> list[tuple[int, int]]:
    """Character ranges of ``text`` that hold whole sentences, each at most ``max_tokens`` tokens.

    Consecutive sentences are packed into one range while they fit; a sentence longer than
    ``max_tokens`` is cut at whitespace. The ranges do not overlap, start and end on non-space
    characters, and only whitespace lies between them: joining their outputs with it loses nothing.
    """
    sentences, start = [], 0
    for boundary in _SENTENCE_END.finditer(text):
        sentences.append((start, boundary.start()))
        start = boundary.end()
    sentences.append((start, len(text)))
    windows: list[tuple[int, int]] = []
    for first, last in sentences:
        if engine.count_tokens(text[first:last]) > max_tokens:
            windows += [
                (first + s, first + e) for s, e in _cut_at_whitespace(text[first:last], engine, max_tokens)
            ]
        elif windows and engine.count_tokens(text[windows[-1][0] : last]) <= max_tokens:
            windows[-1] = (windows[-1][0], last)
        else:
            windows.append((first, last))
    return [_strip(text, s, e) for s, e in windows if text[s:e].strip()]


def _cut_at_whitespace(text: str, engine: Engine, max_tokens: int) -> list[tuple[int, int]]:
    """Consecutive ranges covering ``text``, each at most ``max_tokens`` tokens, cut at a space."""
    offsets = engine.token_offsets(text)
    starts = [s for s, _ in offsets]
    ranges, begin, first = [], 0, 0
    while first < len(offsets):
        last = min(first + max_tokens, len(offsets)) - 1
        end = len(text) if last == len(offsets) - 1 else offsets[last][1]
        cut = text.rfind(" ", begin, end)
        if end < len(text) and cut > begin:
            end = cut
        ranges.append((begin, end))
        begin = end
        first = max(bisect.bisect_left(starts, end), first + 1)
    return ranges


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    piece = text[start:end]
    return start + len(piece) - len(piece.lstrip()), end - len(piece) + len(piece.rstrip())
