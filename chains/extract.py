"""Extraction: any Pydantic schema filled from a text, one record or a list of them.

    >>> class Receipt(BaseModel):
    ...     company: str = Field(description="the shop's name")
    ...     total: str = Field(description="amount paid, as printed")
    >>> Extract(Receipt).invoke(ocr_text)
    Receipt(company='ABC HO TRADING', total='31.00')

Field descriptions go to the model inside the JSON Schema. With ``many=True`` the output is a
list of records. Validators that decoding cannot enforce raise ``OutputValidationError`` with the
raw output, or are retried by sampling again when ``retries`` > 0.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from castline.chains.structured import StructuredChain

DEFAULT_INSTRUCTION = (
    "Extract the requested fields from the user's text. Copy values exactly as they appear; "
    "use null for a field the text does not give."
)


class Extract(StructuredChain[Any]):
    """Fill ``schema`` (or a list of it with ``many=True``) from the input text."""

    def __init__(
        self,
        schema: type[BaseModel],
        *,
        many: bool = False,
        instruction: str | None = None,
        template: Any = "structured",
        **kwargs: Any,
    ) -> None:
        partials = {"instruction": instruction or DEFAULT_INSTRUCTION, **kwargs.pop("partial_variables", {})}
        self.schema = schema
        super().__init__(
            list[schema] if many else schema, template=template, partial_variables=partials, **kwargs
        )
