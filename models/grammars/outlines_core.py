"""The outlines_core backend: the output's regex compiled into a token index, bounded, cached on disk.

outlines_core drops the ways on from a state where the output could already end unless they reach
another end state in one token (``1(-2)?`` after "1" allowed only EOS; the alternative
"card|card_arrival" only "card"). The regex is therefore compiled with a sentinel character after
it: the only end states are after the sentinel, every optional continuation stays open, and EOS is
allowed exactly where reading the sentinel would reach an end state.

Real-world JSON Schemas can keep the index build busy for minutes or make it try to allocate
gigabytes, with no way to interrupt it from Python. So a compile that is not on disk yet runs in
a forked child process: it either sends the compiled index back within ``COMPILE_SECONDS``
(default 5, ``$CASTLINE_COMPILE_SECONDS``) or is killed, and the caller gets an
``OutputTypeError`` saying so -- never a hang, never a half-built grammar.

Compiled indexes are written under ``$CASTLINE_CACHE/grammars``, keyed by the outlines_core
version, the vocabulary (its exact token bytes) and the regex, so a later process loads them in
milliseconds. They are stored as outlines_core's own binary form and read back with
``Index.from_binary`` -- no pickle is ever loaded from the cache.

Where ``fork`` is not available (Windows) the compile runs in-process, unbounded.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import multiprocessing
import os
import tempfile
from typing import TYPE_CHECKING, Any

import numpy as np
from outlines_core import Guide, Index, Vocabulary

from castline.models.grammars import compile_seconds, timed_out
from castline.models.loading import cache_root
from castline.schemas.errors import OutputTypeError

if TYPE_CHECKING:
    from castline.models.decoding import TokenTable

# A private-use character no tokenizer spells; it stands for "the output ends here".
END_SENTINEL = "\ue000"
_SENTINEL_LEAD = b"\xee"  # first UTF-8 byte of U+E000-U+EFFF


def vocabulary_of(table: TokenTable) -> Vocabulary:
    """outlines_core's vocabulary from token bytes, with the end sentinel as an extra token."""
    return table.backend_state("outlines_core", lambda: _vocabulary(table))


def _vocabulary(table: TokenTable) -> Vocabulary:
    by_bytes: dict[bytes, list[int]] = {}
    for token_id, piece in enumerate(table.pieces):
        # Tokens holding the sentinel's lead byte could spell the sentinel as content; leaving
        # them out costs the private-use characters U+E000-U+EFFF, which no output needs.
        if piece and token_id not in table.special_ids and _SENTINEL_LEAD not in piece:
            by_bytes.setdefault(piece, []).append(token_id)
    by_bytes[END_SENTINEL.encode()] = [table.sentinel_id]
    return Vocabulary(table.eos_id, by_bytes)


class OutlinesCoreGrammar:
    """A regex compiled over one vocabulary into an outlines_core index."""

    def __init__(self, regex: str, table: TokenTable) -> None:
        self.table = table
        self.index = compile_index(f"(?:{regex}){END_SENTINEL}", vocabulary_of(table), table.fingerprint)

    def cursor(self) -> OutlinesCoreCursor:
        return OutlinesCoreCursor(self)


class OutlinesCoreCursor:
    """Where one output is in an outlines_core index."""

    def __init__(self, grammar: OutlinesCoreGrammar) -> None:
        self.table = grammar.table
        self.index = grammar.index
        self.guide = Guide(grammar.index)
        self.done = False
        self.consumed = 0  # tokens advanced over, EOS included
        self._words = np.zeros((self.table.size + 1 + 31) // 32, dtype=np.int32)

    def mask_into(self, row: np.ndarray) -> None:
        """Set ``row[t]`` for every token allowed next (``row`` is zeroed by the caller)."""
        if self.done:
            row[self.table.eos_id] = True
            return
        self._words[:] = 0
        self.guide.write_mask_into(self._words.ctypes.data, self._words.size, 4)
        bits = np.unpackbits(self._words.view(np.uint8), bitorder="little").astype(bool)
        n = min(len(row), self.table.size)
        row[:n] = bits[:n]
        row[self.table.eos_id] = self.can_end()

    def advance(self, token_id: int) -> None:
        if self.done:
            return
        self.consumed += 1
        if token_id == self.table.eos_id:
            self.guide.advance(token_id=self.table.sentinel_id, return_tokens=False)
            self.done = True
        else:
            self.guide.advance(token_id=token_id, return_tokens=False)

    def can_end(self) -> bool:
        """Whether the output so far is complete (it may end here).

        The sentinel can also be content (``[^"]`` matches any character): the output is complete
        exactly when reading the sentinel next lands in a final state.
        """
        if self.done:
            return True
        after = self.index.get_next_state(self.guide.get_state(), self.table.sentinel_id)
        return after is not None and self.index.is_final_state(after)

    def spans(self) -> tuple[()]:
        return ()


def compile_index(pattern: str, vocabulary: Vocabulary, vocabulary_key: str) -> Index:
    """The index of ``pattern`` over ``vocabulary``, from the disk cache or compiled within the bound."""
    version = importlib.metadata.version("outlines_core")
    key = hashlib.sha256(f"{version}\0{vocabulary_key}\0{pattern}".encode()).hexdigest()[:32]
    path = cache_root() / "grammars" / f"{key}.index"
    if path.is_file():
        try:
            return Index.from_binary(path.read_bytes())
        except (ValueError, OSError):
            path.unlink(missing_ok=True)  # damaged: compile again
    data = _compile_bounded(pattern, vocabulary, compile_seconds())
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=".compiling-", dir=path.parent)
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    os.replace(staging, path)
    return Index.from_binary(data)


def _binary(index: Index) -> bytes:
    """outlines_core's own serialised form of ``index`` (what its pickle support carries)."""
    return bytes(index.__reduce__()[1][0])


def _child(pattern: str, vocabulary: Vocabulary, channel: Any) -> None:
    try:
        channel.send(("ok", _binary(Index(pattern, vocabulary))))
    except ValueError as exc:
        channel.send(("error", str(exc)))
    channel.close()


def _compile_bounded(pattern: str, vocabulary: Vocabulary, seconds: float) -> bytes:
    if "fork" not in multiprocessing.get_all_start_methods():
        try:
            return _binary(Index(pattern, vocabulary))
        except ValueError as exc:
            raise OutputTypeError(f"cannot build a decoding constraint: {exc}") from exc
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(pattern, vocabulary, send), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(seconds):
            raise timed_out(seconds)
        try:
            status, payload = receive.recv()
        except EOFError:
            child.join()
            raise OutputTypeError(
                f"the grammar compiler died (exit code {child.exitcode}), likely out of memory on this "
                "output type; simplify the type"
            ) from None
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()
    if status != "ok":
        raise OutputTypeError(f"cannot build a decoding constraint: {payload}")
    return payload
