"""The fake engine: no model, outputs that fit the requested type, recorded requests (for tests)."""

from castline.models.fake.engine import FakeEngine

__all__ = ["FakeEngine"]
