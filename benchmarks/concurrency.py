"""32 concurrent ``ainvoke`` calls, coalesced into one batch or each its own model call, one run.

    python benchmarks/concurrency.py

An async web app calls ``chain.ainvoke`` once per request; this is that traffic on the embedded
model (transformers fp32, the structured Contact chain of ``benchmarks/engines.py``). Prints
requests/s both ways and their ratio.
"""

from __future__ import annotations

import asyncio
import json
import time

from engines import TEXTS, Contact

from castline.chains import StructuredChain
from castline.models import load_model

CALLS = 32


async def concurrent_calls(chain: StructuredChain) -> tuple[float, int]:
    """(requests/s, errors) of CALLS concurrent ainvoke calls."""
    texts = [TEXTS[i % len(TEXTS)] + f" (ticket {i})" for i in range(CALLS)]
    started = time.perf_counter()
    results = await asyncio.gather(*(chain.ainvoke(t) for t in texts), return_exceptions=True)
    seconds = time.perf_counter() - started
    return CALLS / seconds, sum(not isinstance(r, Contact) for r in results)


def main() -> None:
    model = load_model(engine="transformers", dtype="float32")
    chain = StructuredChain(Contact, model=model, max_new_tokens=96)
    chain.invoke(TEXTS[0])  # warm: compiles the schema, caches the prompt prefix
    figures: dict[str, float] = {}
    figures["coalesced_requests_s"], figures["coalesced_errors"] = asyncio.run(concurrent_calls(chain))
    chain.coalesce_window = None
    figures["one_call_each_requests_s"], figures["one_call_each_errors"] = asyncio.run(
        concurrent_calls(chain)
    )
    figures["coalesced_vs_one_call_each"] = (
        figures["coalesced_requests_s"] / figures["one_call_each_requests_s"]
    )
    print(json.dumps({k: round(v, 2) for k, v in figures.items()}, indent=2))


if __name__ == "__main__":
    main()
