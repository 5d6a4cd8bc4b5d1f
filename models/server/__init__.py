"""The server engine: castline's chains on an OpenAI-compatible server (vLLM), over HTTP."""

from castline.models.server.engine import ServerEngine, load_server

__all__ = ["ServerEngine", "load_server"]
