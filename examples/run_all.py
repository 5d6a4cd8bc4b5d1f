"""Run every example in this folder against the embedded default model."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = [
    "extract_contact",
    "route_ticket",
    "find_dates",
    "classify_intents",
    "extract_receipt",
    "ner_news",
    "qa_paragraph",
    "summarize_notes",
    "translate_messages",
    "train_intents",
]


def main() -> int:
    for name in EXAMPLES:
        spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # Pydantic resolves postponed annotations through it
        spec.loader.exec_module(module)
        print(f"\n== {name} ==")
        started = time.perf_counter()
        module.main()
        print(f"({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
