"""Result types, output types, generation settings and the error hierarchy (no torch here)."""

from castline.schemas.errors import (
    CastlineError,
    DataError,
    DefaultModelMissingError,
    EngineCapabilityError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    ModelOutputError,
    OutputTypeError,
    OutputValidationError,
    RealModelBlockedError,
    ServerError,
    TemplateError,
    TruncatedOutputError,
    UnsafeWeightsError,
    UserError,
)
from castline.schemas.output_types import Labels, OutputSpec, Regex, output_spec
from castline.schemas.settings import GenerationSettings

__all__ = [
    "CastlineError",
    "DataError",
    "DefaultModelMissingError",
    "EngineCapabilityError",
    "GenerationSettings",
    "InvalidInputError",
    "Labels",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelOutputError",
    "OutputSpec",
    "OutputTypeError",
    "OutputValidationError",
    "RealModelBlockedError",
    "Regex",
    "ServerError",
    "TemplateError",
    "TruncatedOutputError",
    "UnsafeWeightsError",
    "UserError",
    "output_spec",
]
