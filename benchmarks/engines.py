"""Engine against engine on the embedded model, one run: structured decoding and label scoring.

    python benchmarks/engines.py            # transformers fp32 / bf16 and llama.cpp (if installed)

Prints tokens/s of the same structured chain on each engine (greedy, same prompts), the ratio of
llama.cpp to transformers fp32, castline-on-llama.cpp against raw llama-cpp-python unconstrained
decoding of the same number of tokens, and label-scoring throughput (items/s) with 6 labels and
with BANKING77's 77 intents (read from ../shared/data when it is there).
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from castline.chains import Classify, StructuredChain
from castline.models import GenerationRequest, load_model

TEXTS = [
    "Hi, I'm Maria Lopez, reach me at maria.lopez@example.com or +34 612 345 678.",
    "Contact: John Smith (john@smith.dev), phone 555-0100, based in Denver.",
    "Write to Aiko Tanaka at aiko.t@example.jp; mobile 090-1234-5678.",
    "Our new hire, Peter Novak, uses pnovak@corp.example and extension 4412.",
]
LABELS = ["card_arrival", "card_payment", "cash_withdrawal", "exchange_rate", "lost_card", "top_up"]
BANKING77 = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "classification" / "banking77_categories.json"
)


class Contact(BaseModel):
    name: str = Field(description="the person's full name")
    email: str = Field(description="email address")
    phone: str = Field(description="phone number as written")


def structured_tokens_per_second(model: Any) -> tuple[float, int]:
    chain = StructuredChain(Contact, model=model, max_new_tokens=96)
    chain.invoke(TEXTS[0])  # warm: compiles, caches the shared prompt prefix
    requests = [
        GenerationRequest(chain.prompt_for({"text": t}), chain.spec, max_new_tokens=96) for t in TEXTS
    ]
    started = time.perf_counter()
    generations = [model.generate([r])[0] for r in requests]
    seconds = time.perf_counter() - started
    tokens = sum(len(g.token_ids) + 1 for g in generations)
    return tokens / seconds, tokens


def raw_llamacpp_tokens_per_second(engine: Any, n_tokens: int) -> float:
    """llama-cpp-python's own completion loop, unconstrained, EOS ignored, same prompts.

    Its ``generate`` reuses the prompt prefix left in the context, as castline's loop does.
    """
    chain = StructuredChain(Contact, model=engine)
    per_prompt = n_tokens // len(TEXTS)
    started = time.perf_counter()
    for text in TEXTS:
        ids = engine.encode_prompt(chain.prompt_for({"text": text}))
        for i, _ in enumerate(engine.llm.generate(ids, temp=0.0, reset=True)):
            if i + 1 >= per_prompt:
                break
    return per_prompt * len(TEXTS) / (time.perf_counter() - started)


def scoring_items_per_second(model: Any, labels: list[str]) -> float:
    chain = Classify(labels, model=model)
    chain.prior()  # content-free prior measured once per chain, not per item
    started = time.perf_counter()
    chain.batch(TEXTS * 2)
    return len(TEXTS) * 2 / (time.perf_counter() - started)


def main() -> None:
    label_sets = {"6": LABELS}
    if BANKING77.is_file():
        label_sets["77"] = list(json.loads(BANKING77.read_text()))
    figures: dict[str, Any] = {}
    for label, options in [
        ("transformers_fp32", {"dtype": "float32"}),
        ("transformers_bf16", {"dtype": "bfloat16"}),
    ]:
        model = load_model(engine="transformers", **options)
        figures[f"{label}_structured_tok_s"], _ = structured_tokens_per_second(model)
        for n, labels in label_sets.items():
            figures[f"{label}_scoring_{n}_labels_items_s"] = scoring_items_per_second(model, labels)
        del model
    if importlib.util.find_spec("llama_cpp") is not None:
        engine = load_model(engine="llamacpp")
        tok_s, tokens = structured_tokens_per_second(engine)
        figures["llamacpp_structured_tok_s"] = tok_s
        figures["llamacpp_raw_unconstrained_tok_s"] = raw_llamacpp_tokens_per_second(engine, tokens)
        for n, labels in label_sets.items():
            figures[f"llamacpp_scoring_{n}_labels_items_s"] = scoring_items_per_second(engine, labels)
        figures["llamacpp_vs_fp32"] = tok_s / figures["transformers_fp32_structured_tok_s"]
        figures["castline_llamacpp_vs_raw"] = tok_s / figures["llamacpp_raw_unconstrained_tok_s"]
    print(json.dumps({k: round(v, 2) for k, v in figures.items()}, indent=2))


if __name__ == "__main__":
    main()
