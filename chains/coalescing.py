"""Concurrent ``ainvoke`` calls on one chain become one batched model call.

An async web app calls ``chain.ainvoke(x)`` once per request. Run one by one, those are as many
model calls, each as slow as a whole batch. ``MicroBatcher`` collects the calls that arrive within a
short window (and all that arrive while a batch is running), runs them as one ``_run_batch``, and
hands each caller its own result or its own error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class MicroBatcher:
    """Collects items on one event loop and runs them in batches off the loop."""

    def __init__(self, run_batch: Callable[[list[Any]], list[Any]], window: float) -> None:
        self.run_batch = run_batch
        self.window = window
        self.pending: list[tuple[Any, asyncio.Future[Any]]] = []
        self.runner: asyncio.Task[None] | None = None

    async def submit(self, item: Any) -> Any:
        """The result for ``item``, computed in a batch with the items submitted around it."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        if self.runner is None:
            self.runner = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(self.window)  # let the calls of this moment gather
            while self.pending:
                batch, self.pending = self.pending, []
                try:
                    results = await loop.run_in_executor(None, self.run_batch, [item for item, _ in batch])
                except Exception as exc:  # the whole batch failed (e.g. the engine refused it)
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.cancelled():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self.runner = None
