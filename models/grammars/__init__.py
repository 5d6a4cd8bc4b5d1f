"""Grammar backends: an output type's language compiled over one vocabulary, behind one interface.

``compile_grammar(spec, table)`` returns a ``Grammar``; ``grammar.cursor()`` follows one output:
``mask_into(row)`` marks the tokens allowed next, ``advance(token)`` consumes the chosen one,
``can_end()`` says whether the output so far is complete. Engines and the fake only use that.

Backends (``$CASTLINE_GRAMMAR``, or ``load_model(..., grammar_backend=...)``):

- ``llguidance`` (default): compiles labels, regexes and JSON Schemas directly, in milliseconds.
  Chosen by measurement (``benchmarks/grammar_backends.py``): on 270 real-world and test-suite
  schemas it compiled the most without a hang and accepted no invalid instance.
- ``outlines_core``: the schema's regex compiled into a token index (slower to build, cached on
  disk); kept selectable for comparison and for users who depend on its exact language.

Whatever the backend, a compile is bounded in time (``$CASTLINE_COMPILE_SECONDS``, default 5)
and a failure is an ``OutputTypeError`` naming the cause.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

import numpy as np

from castline.schemas.errors import OutputTypeError

if TYPE_CHECKING:
    from castline.models.decoding import TokenTable
    from castline.schemas.output_types import OutputSpec

GRAMMAR_ENV = "CASTLINE_GRAMMAR"
COMPILE_ENV = "CASTLINE_COMPILE_SECONDS"
BACKENDS = ("llguidance", "outlines_core")


class GrammarCursor(Protocol):
    """Where one output is in a compiled grammar."""

    done: bool
    consumed: int  # tokens advanced over, EOS included

    def mask_into(self, row: np.ndarray) -> None: ...

    def advance(self, token_id: int) -> None: ...

    def can_end(self) -> bool: ...

    def spans(self) -> tuple[()]: ...


class Grammar(Protocol):
    """An output type's language compiled over one vocabulary (the expensive step; cache it)."""

    table: TokenTable

    def cursor(self) -> GrammarCursor: ...


def default_backend() -> str:
    """The grammar backend named by ``$CASTLINE_GRAMMAR`` (default llguidance)."""
    return check_backend(os.environ.get(GRAMMAR_ENV) or "llguidance")


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise OutputTypeError(f"grammar backend must be one of {list(BACKENDS)}, not {name!r}")
    return name


def compile_seconds() -> float:
    """The time a compile may take (``$CASTLINE_COMPILE_SECONDS``, default 5)."""
    try:
        return float(os.environ.get(COMPILE_ENV, "5"))
    except ValueError:
        raise OutputTypeError(f"${COMPILE_ENV} must be a number of seconds") from None


def timed_out(seconds: float) -> OutputTypeError:
    return OutputTypeError(
        f"the output type's grammar did not compile within {seconds:g} s (a large or deeply nested "
        f"schema, or pattern properties); simplify the type, or raise ${COMPILE_ENV}"
    )


def compile_grammar(spec: OutputSpec, table: TokenTable, backend: str) -> Grammar:
    """``spec``'s language over ``table``'s vocabulary, compiled by ``backend`` within the bound."""
    if check_backend(backend) == "llguidance":
        from castline.models.grammars.llguidance import LLGuidanceGrammar

        return LLGuidanceGrammar(spec, table)
    from castline.models.grammars.outlines_core import OutlinesCoreGrammar

    return OutlinesCoreGrammar(spec.regex, table)


__all__ = ["BACKENDS", "Grammar", "GrammarCursor", "compile_grammar", "compile_seconds", "default_backend"]
