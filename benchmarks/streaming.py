"""Time to the first partial object against time to the full object, on the embedded model.

    python benchmarks/streaming.py [--runs 5]

``StructuredChain(Trip).stream(text)`` on short travel sentences; for each run, the seconds until
the first partial object (one field final) and until the final, validated object. Medians over
the runs, greedy decoding, one model loaded once (a warm-up call first).
"""

from __future__ import annotations

import argparse
import statistics
import time

from pydantic import BaseModel

from castline.chains import StructuredChain
from castline.models import load_model

TEXTS = [
    "Three days in Paris, France.",
    "A week of hiking near Cusco, Peru.",
    "Two nights in Kyoto, Japan, for the festival.",
    "Ten days in Lisbon, Portugal, with friends.",
    "A long weekend in Berlin, Germany.",
]


class Trip(BaseModel):
    city: str
    country: str
    days: int


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    chain = StructuredChain(Trip, model=load_model())
    chain.invoke(TEXTS[0])  # warm-up: grammar compiled, caches filled
    first, full, partials = [], [], []
    for i in range(args.runs):
        started = time.perf_counter()
        items = []
        for item in chain.stream(TEXTS[i % len(TEXTS)]):
            items.append(item)
            if len(items) == 1:
                first.append(time.perf_counter() - started)
        full.append(time.perf_counter() - started)
        partials.append(len(items) - 1)
    print(f"runs: {args.runs}, partial objects per run: {partials}")
    for name, times in (("first partial object", first), ("full object", full)):
        spread = f"min {min(times):.2f}, max {max(times):.2f}"
        print(f"{name:>20}: median {statistics.median(times):.2f} s ({spread})")
    print(f"ratio: {statistics.median(full) / statistics.median(first):.1f}x sooner")


if __name__ == "__main__":
    main()
