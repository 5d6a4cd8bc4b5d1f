"""Generation settings, set per chain and overridable per call."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from castline.schemas.errors import UserError


class GenerationSettings(BaseModel):
    """How tokens are chosen. ``temperature=0`` (the default) is greedy decoding."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_new_tokens: int | None = Field(
        None, gt=0, description="Token budget for the output; None uses the output type's default."
    )
    temperature: float = Field(0.0, ge=0.0, description="0 is greedy; above 0 samples.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass when sampling.")
    seed: int | None = Field(None, description="Seed for sampling, for reproducible draws.")

    def merged(self, overrides: dict[str, Any]) -> GenerationSettings:
        """These settings with ``overrides`` applied (unknown names are a clear error)."""
        unknown = set(overrides) - set(type(self).model_fields)
        if unknown:
            raise UserError(
                f"unknown generation setting(s) {sorted(unknown)}; "
                f"use any of {sorted(type(self).model_fields)}"
            )
        if not overrides:
            return self
        return type(self).model_validate({**self.model_dump(), **overrides})
