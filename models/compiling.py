"""Compiling a regex into an outlines_core index: bounded in time, cached on disk.

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
from typing import Any

from outlines_core import Index, Vocabulary

from castline.models.loading import cache_root
from castline.schemas.errors import OutputTypeError

COMPILE_ENV = "CASTLINE_COMPILE_SECONDS"


def compile_seconds() -> float:
    """The time a compile may take (``$CASTLINE_COMPILE_SECONDS``, default 5)."""
    try:
        return float(os.environ.get(COMPILE_ENV, "5"))
    except ValueError:
        raise OutputTypeError(f"${COMPILE_ENV} must be a number of seconds") from None


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
            raise OutputTypeError(
                f"the output type's grammar did not compile within {seconds:g} s (a large or deeply "
                f"nested schema, or pattern properties); simplify the type, or raise ${COMPILE_ENV}"
            )
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
