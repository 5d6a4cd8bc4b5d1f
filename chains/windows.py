"""Overlapping windows over long inputs, and merging span results back into the full text."""

from __future__ import annotations

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
