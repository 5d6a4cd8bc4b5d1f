"""Fuzz counts: hostile inputs and damaged files through the public API, every outcome classified.

    python benchmarks/fuzz.py

Inputs are the lists ``tests/test_fuzz.py`` tries (None, wrong types, empty, control characters,
unpaired surrogates, 1M characters, control-token text, template syntax), run through every chain
on ``FakeEngine`` one at a time and in a batch beside a good input; plus hostile templates and
damaged data and adapter files. Each call ends as a result (checked: the output type's own class,
spans exact), a castline error, an untyped exception, or a hang (no answer within 120 s).
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from castline.chains import AnswerQuestion, StructuredChain
from castline.evaluation.readers import read_conll, read_inputs, read_jsonl, read_labeled_csv, read_squad
from castline.models import FakeEngine
from castline.prompts.templates import PromptTemplate
from castline.schemas import CastlineError
from castline.schemas.results import Answer, Classification, Entities, MultiLabelClassification

HANG_SECONDS = 120
TESTS = Path(__file__).resolve().parents[1] / "tests" / "test_fuzz.py"

TEMPLATES = [
    "{% include 'x' %}",
    "{% import 'x' as y %}",
    "{% extends 'x' %}",
    "{{ range(10**9) | list }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{% for a in range(10000) %}{% for b in range(10000) %}x{% endfor %}{% endfor %}",
    "{{ ''.__class__.__mro__ }}",
    "{{ text",
    "{{ 9 ** 9 ** 9 }}",
]
DAMAGED = {
    "empty": b"",
    "binary": bytes(range(256)) * 4,
    "truncated JSON": b'{"text": "a", "output": {"name": "x"',
    "not UTF-8": b"\xff\xfe\x00text,label\n",
    "half a CSV quote": b'text,label\n"unterminated,spam\n',
}


def classify_outcome(run: Callable[[], Any], check: Callable[[Any], bool]) -> str:
    box: list[Any] = []

    def target() -> None:
        try:
            box.append(("result", run()))
        except CastlineError:
            box.append(("typed", None))
        except Exception as exc:  # counted: that is the point
            box.append(("untyped", exc))

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(HANG_SECONDS)
    if not box:
        return "hang"
    kind, value = box[0]
    if kind == "untyped":
        print(f"  untyped: {type(value).__name__}: {value}")
        return "untyped"
    if kind == "typed":
        return "typed error"
    return "valid result" if check(value) else "invalid result"


def spans_exact(text: Any, entities: Entities) -> bool:
    return all(isinstance(text, str) and text[e.start : e.end] == e.text for e in entities.entities)


def main() -> None:
    spec = importlib.util.spec_from_file_location("fuzz_inputs", TESTS)
    assert spec and spec.loader
    listed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(listed)
    fake = FakeEngine()
    chains = listed._chains(fake)
    expected: dict[str, Callable[[Any, Any], bool]] = {
        "classify": lambda _, r: (
            isinstance(r, Classification) and abs(sum(r.probabilities.values()) - 1) < 1e-6
        ),
        "multi-label": lambda _, r: isinstance(r, MultiLabelClassification),
        "ner": lambda x, r: isinstance(r, Entities) and spans_exact(x if isinstance(x, str) else None, r),
        "extract": lambda _, r: isinstance(r, listed.Record),
        "extract-spans": lambda _, r: isinstance(r, listed.Record),
        "structured": lambda _, r: isinstance(r, listed.Record),
    }
    tally: Counter[str] = Counter()
    for name, chain in chains.items():
        for value in listed.TEXT_INPUTS:
            check = expected[name]
            call = lambda c=chain, v=value: c.invoke(v)  # noqa: E731
            tally[classify_outcome(call, lambda r, v=value, f=check: f(v, r))] += 1
            batch = chain.batch([value, "fine text"], return_exceptions=True)
            for item, given in zip(batch, [value, "fine text"], strict=True):
                if isinstance(item, CastlineError):
                    tally["typed error"] += 1
                elif isinstance(item, Exception):
                    tally["untyped"] += 1
                else:
                    tally["valid result" if check(given, item) else "invalid result"] += 1
    qa = AnswerQuestion(model=fake)
    for value in listed.QA_INPUTS:
        tally[classify_outcome(lambda v=value: qa.invoke(v), lambda r: isinstance(r, Answer))] += 1
    for source in TEMPLATES:
        tally[
            classify_outcome(
                lambda s=source: StructuredChain(
                    listed.Record, model=fake, template=PromptTemplate(s + " {{ text }}")
                ).invoke("x"),
                lambda r: isinstance(r, listed.Record),
            )
        ] += 1
    readers = [read_labeled_csv, read_conll, read_squad, read_jsonl, read_inputs]
    with TemporaryDirectory() as folder:
        for label, data in DAMAGED.items():
            for suffix in (".csv", ".conll", ".json", ".jsonl"):
                path = Path(folder) / f"damaged{suffix}"
                path.write_bytes(data)
                for reader in readers:
                    tally[classify_outcome(lambda r=reader, p=path: r(p), lambda r: isinstance(r, list))] += 1
            adapter = Path(folder) / f"adapter-{len(label)}"
            adapter.mkdir()
            (adapter / "adapter_model.safetensors").write_bytes(data)
            (adapter / "adapter_config.json").write_bytes(data or b"{}")
            tally[classify_outcome(lambda a=adapter: fake.load_adapter(a), lambda r: True)] += 1
    print(json.dumps({"calls": sum(tally.values()), **dict(sorted(tally.items()))}))


if __name__ == "__main__":
    main()
