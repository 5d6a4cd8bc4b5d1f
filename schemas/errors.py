"""The one error hierarchy of castline.

Every error castline raises on purpose derives from ``CastlineError`` and is split by whose
fault it is, so callers can catch exactly what they can act on::

    CastlineError
    ├── UserError                  the caller asked for something that cannot work
    │   ├── ModelLoadError         a model could not be loaded
    │   │   ├── ModelNotFoundError        the path (or hub id) is not available locally
    │   │   ├── DefaultModelMissingError  the embedded model package is not installed
    │   │   ├── UnsafeWeightsError        weights are not safetensors or GGUF
    │   │   └── RealModelBlockedError     real models are blocked (unit tests on FakeEngine)
    │   ├── TemplateError          a prompt template is missing, broken or misses variables
    │   ├── OutputTypeError        an output type castline cannot constrain decoding to
    │   ├── EngineCapabilityError  the engine cannot do what the chain needs (names both)
    │   ├── InvalidInputError      a chain input is not what the chain expects
    │   └── DataError              a data file cannot be read (names file, line, problem)
    ├── ServerError                a model server failed, timed out or was unreachable (after retries)
    └── ModelOutputError           the model produced something unusable (raw text kept)
        ├── TruncatedOutputError   generation stopped at max_new_tokens inside the output
        └── OutputValidationError  the output fits the grammar but fails Pydantic validation

Messages say what to change. Output errors keep the raw text so nothing is lost.
"""

from __future__ import annotations


class CastlineError(Exception):
    """Base class of every error castline raises on purpose."""


class UserError(CastlineError):
    """The caller asked for something that cannot work; the message says what to change."""


class ModelLoadError(UserError):
    """A model could not be loaded."""


class ModelNotFoundError(ModelLoadError):
    """The model path does not exist locally (castline never downloads at run time)."""


class DefaultModelMissingError(ModelLoadError):
    """The package carrying the embedded default model is not installed."""


class UnsafeWeightsError(ModelLoadError):
    """The weights are in a format castline refuses to load (only safetensors and GGUF)."""


class RealModelBlockedError(ModelLoadError):
    """A real model was about to load while ``block_real_models()`` is in force."""


class EngineCapabilityError(UserError):
    """The engine lacks a capability the chain needs; raised when the chain is built."""

    def __init__(self, message: str, engine: str, capability: str) -> None:
        super().__init__(message)
        self.engine = engine
        self.capability = capability


class TemplateError(UserError):
    """A prompt template is missing, does not parse, or does not match the chain's input."""


class OutputTypeError(UserError):
    """The output type cannot be turned into a decoding constraint."""


class InvalidInputError(UserError):
    """A chain input does not have the fields the chain's template needs."""


class DataError(UserError):
    """A data file cannot be read; the message names the file, the line and the problem."""


class ServerError(CastlineError):
    """A model server could not answer: unreachable, timed out, or failing (after retries).

    ``status`` is the HTTP status when the server answered, else None.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ModelOutputError(CastlineError):
    """The model produced output that cannot become the requested object.

    ``raw`` holds the generated text exactly as decoded.
    """

    def __init__(self, message: str, raw: str) -> None:
        super().__init__(message)
        self.raw = raw


class TruncatedOutputError(ModelOutputError):
    """Generation reached ``max_new_tokens`` before the output was complete."""

    def __init__(self, raw: str, max_new_tokens: int) -> None:
        super().__init__(
            f"output stopped at max_new_tokens={max_new_tokens} before it was complete "
            f"(got {len(raw)} characters: {raw[:80]!r}...); raise max_new_tokens",
            raw,
        )
        self.max_new_tokens = max_new_tokens


class OutputValidationError(ModelOutputError):
    """The output fits the decoding constraint but fails validation (e.g. a custom validator)."""

    def __init__(self, message: str, raw: str, errors: list[dict] | None = None) -> None:
        super().__init__(message, raw)
        self.errors = errors or []
