"""HTTP to an OpenAI-compatible server: many requests in flight, bounded, retried where it helps.

The engine seam is synchronous, but a server batches best when it holds many requests at once.
``ServerClient`` runs one asyncio loop in a daemon thread; ``post_many`` sends a whole batch into
it and waits, at most ``max_in_flight`` requests open at a time, so the server's continuous
batching does the work.

Retries: connection errors, timeouts, 429 and 5xx are retried with exponential backoff (a
restarting server, a full queue); any other 4xx is the request's own fault and is returned at
once. What still fails becomes a typed error for that request only.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import httpx

from castline.schemas.errors import CastlineError, InvalidInputError, ServerError

T = TypeVar("T")
RETRIED_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF = 8.0  # seconds between two attempts, at most


class ServerClient:
    """JSON over HTTP to ``base_url`` (its ``/v1/...`` paths and vLLM's ``/tokenize``).

    ``api_key`` is sent as a bearer token and never appears in reprs or errors. ``transport`` is
    for tests (``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_in_flight: int = 32,
        retries: int = 4,
        backoff: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_in_flight < 1 or retries < 0 or timeout <= 0:
            raise InvalidInputError("max_in_flight must be ≥ 1, retries ≥ 0 and timeout > 0")
        self.base_url = base_url.rstrip("/")
        self.max_in_flight = max_in_flight
        self.retries = retries
        self.backoff = backoff
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="castline-http", daemon=True)
        self._thread.start()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

        async def make_client() -> httpx.AsyncClient:
            return httpx.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                limits=httpx.Limits(max_connections=max_in_flight),
                transport=transport,
            )

        self._http = self._run(make_client())
        self._gate = asyncio.Semaphore(max_in_flight)

    def __repr__(self) -> str:
        return f"ServerClient({self.base_url!r}, max_in_flight={self.max_in_flight})"

    # -- sync entry points ---------------------------------------------------------------------

    def get(self, path: str) -> Any:
        """The JSON answer of ``GET path``, or a typed error raised."""
        return self._raise_or_return(self._run(self._request("GET", path, None)))

    def post(self, path: str, payload: dict[str, Any]) -> Any:
        """The JSON answer of ``POST path``, or a typed error raised."""
        return self._raise_or_return(self.try_post(path, payload))

    def try_post(self, path: str, payload: dict[str, Any]) -> Any | CastlineError:
        """The JSON answer of ``POST path``, or its typed error returned."""
        return self._run(self._request("POST", path, payload))

    def post_many(self, path: str, payloads: Sequence[dict[str, Any]]) -> list[Any | CastlineError]:
        """One answer (or typed error) per payload, in order; all sent concurrently, bounded."""

        async def gather() -> list[Any | CastlineError]:
            return list(await asyncio.gather(*(self._request("POST", path, p) for p in payloads)))

        return self._run(gather())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._http.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    # -- internals -----------------------------------------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    @staticmethod
    def _raise_or_return(result: Any) -> Any:
        if isinstance(result, CastlineError):
            raise result
        return result

    async def _request(self, method: str, path: str, payload: dict[str, Any] | None) -> Any:
        """One request with retries; returns the JSON answer or a ``CastlineError`` (never raises)."""
        failure: ServerError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(min(MAX_BACKOFF, self.backoff * 2 ** (attempt - 1)))
            async with self._gate:
                try:
                    response = await self._http.request(method, path, json=payload)
                except httpx.TimeoutException as exc:
                    failure = ServerError(f"{self.base_url}{path} timed out ({type(exc).__name__})")
                    continue
                except httpx.TransportError as exc:
                    failure = ServerError(f"cannot reach {self.base_url}{path}: {type(exc).__name__}: {exc}")
                    continue
            if response.status_code < 400:
                try:
                    return response.json()
                except ValueError:
                    return response.text  # some endpoints (vLLM's adapter loading) answer in words
            failure = ServerError(
                f"{self.base_url}{path} answered HTTP {response.status_code}: {_error_message(response)}",
                response.status_code,
            )
            if response.status_code not in RETRIED_STATUS:
                return failure  # the request itself is wrong: sending it again cannot help
        assert failure is not None
        tries = self.retries + 1
        return ServerError(f"{failure} (after {tries} attempt{'s' * (tries > 1)})", failure.status)


def _error_message(response: httpx.Response) -> str:
    """The server's own error message (vLLM and OpenAI nest it under ``error.message``)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"][:500]
        if isinstance(body.get("message"), str):
            return str(body["message"])[:500]
    return str(body)[:300]
