"""LangChain's own standard tests (``langchain-tests``) on ``CastlineChatModel``.

Unit tests over the fake engine; the integration tests over the embedded model (marked
``real_model``). Capabilities castline does not offer (tools, images, audio, PDFs) are declared
off, so those tests skip as they would for any model without them.

Known failures, expected with the exact typed error (any other failure fails the run):
``KNOWN_FAILURES`` below; ``tests/conftest.py`` marks them.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from castline.chains import CastlineChatModel
from castline.models import FakeEngine
from castline.schemas import OutputTypeError, TruncatedOutputError

# The 135M model, asked for a joke as {"setup", "punchline"}, repeats a phrase until the token
# budget: castline raises TruncatedOutputError rather than return half an object.
_LOOPS = (TruncatedOutputError, "the 135M embedded model loops on the joke schema until its token budget")
KNOWN_FAILURES = {
    "test_structured_output[": _LOOPS,
    "test_structured_output_async[": _LOOPS,
    "test_structured_output_optional_param": _LOOPS,
    # pydantic.v1 models have no JSON Schema pydantic 2 can build: no grammar to decode under.
    "test_structured_output_pydantic_2_v1": (OutputTypeError, "pydantic.v1 models are not an output type"),
}


class CastlineChatModelCapabilities:
    """What both standard suites need to know: the class, and the capabilities castline declares."""

    @property
    def chat_model_class(self) -> type[CastlineChatModel]:
        return CastlineChatModel

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # an engine holds one loaded model


class TestCastlineChatModelUnit(CastlineChatModelCapabilities, ChatModelUnitTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"engine": FakeEngine(), "max_new_tokens": 32}


@pytest.mark.real_model
class TestCastlineChatModelIntegration(CastlineChatModelCapabilities, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        from castline.chains import default_model

        return {"engine": default_model(), "max_new_tokens": 48}  # loaded once, shared by every test

    @property
    def returns_usage_metadata(self) -> bool:
        return True
