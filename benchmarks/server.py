"""castline on a real vLLM server against in-process, one run: throughput and label scoring.

    python benchmarks/server.py        # needs `make vllm` (vLLM's CPU build in .venv-vllm)

Starts vLLM on the embedded model (fp32, as the in-process default) and prints:
- structured decoding (the same JSON chain, greedy) over 32 requests with 1, 8 and 32 requests in
  flight, in tokens/s and requests/s, and the transformers engine's batch of the same requests;
- label scoring in items/s with 6 labels and BANKING77's 77 intents: the server by trie walk
  (``logprob_token_ids``), by prompt log-probs (a second server without LoRA: vLLM's CPU build
  crashes on prompt log-probs with LoRA enabled), and in-process.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from engines import BANKING77, LABELS, TEXTS, Contact

from castline.chains import Classify, StructuredChain
from castline.models import GenerationRequest, load_model
from castline.models.loading import resolve_source, weights_dir
from castline.models.server.launch import default_vllm_python, running_vllm

REQUESTS = 32
SCORED_TEXTS = TEXTS[:2]  # items per label set: prompt log-probs over 77 labels take ~100 s an item


def structured_throughput(model: Any) -> tuple[float, float]:
    """(tokens/s, requests/s) of REQUESTS structured requests sent as one batch."""
    chain = StructuredChain(Contact, model=model, max_new_tokens=96)
    chain.invoke(TEXTS[0])  # warm
    texts = [TEXTS[i % len(TEXTS)] + f" (ticket {i})" for i in range(REQUESTS)]
    requests = [
        GenerationRequest(chain.prompt_for({"text": t}), chain.spec, max_new_tokens=96) for t in texts
    ]
    started = time.perf_counter()
    generations = model.generate(requests)
    seconds = time.perf_counter() - started
    tokens = sum(len(g.token_ids) + 1 for g in generations)
    return tokens / seconds, len(requests) / seconds


def scoring_items_per_second(model: Any, labels: list[str]) -> float:
    chain = Classify(labels, model=model, calibrate=False)  # the prior is one-off, not per item
    started = time.perf_counter()
    chain.batch(SCORED_TEXTS)
    return len(SCORED_TEXTS) / (time.perf_counter() - started)


def main() -> None:
    label_sets = {"6": LABELS}
    if BANKING77.is_file():
        label_sets["77"] = list(json.loads(BANKING77.read_text()))
    model_dir = weights_dir(resolve_source(None))
    python = default_vllm_python()
    logs = Path(tempfile.mkdtemp(prefix="castline-vllm-"))
    figures: dict[str, float] = {}

    local = load_model(engine="transformers", dtype="float32")
    figures["in_process_structured_tok_s"], figures["in_process_structured_req_s"] = structured_throughput(
        local
    )
    for n, labels in label_sets.items():
        figures[f"in_process_scoring_{n}_labels_items_s"] = scoring_items_per_second(local, labels)
    del local

    with running_vllm(python, model_dir, logs / "lora.log") as base_url:
        for in_flight in (1, 8, 32):
            server = load_model(engine="openai", base_url=base_url, max_in_flight=in_flight)
            tok_s, req_s = structured_throughput(server)
            figures[f"server_{in_flight}_in_flight_structured_tok_s"] = tok_s
            figures[f"server_{in_flight}_in_flight_structured_req_s"] = req_s
            server.close()
        server = load_model(engine="openai", base_url=base_url)
        for n, labels in label_sets.items():
            figures[f"server_trie_scoring_{n}_labels_items_s"] = scoring_items_per_second(server, labels)
        server.close()

    with running_vllm(python, model_dir, logs / "plain.log", lora=False) as base_url:
        server = load_model(engine="openai", base_url=base_url, scoring="prompt_logprobs")
        for n, labels in label_sets.items():
            figures[f"server_prompt_logprobs_scoring_{n}_labels_items_s"] = scoring_items_per_second(
                server, labels
            )
        server.close()

    figures["server_32_vs_1_in_flight"] = (
        figures["server_32_in_flight_structured_tok_s"] / figures["server_1_in_flight_structured_tok_s"]
    )
    figures["server_32_in_flight_vs_in_process"] = (
        figures["server_32_in_flight_structured_tok_s"] / figures["in_process_structured_tok_s"]
    )
    print(json.dumps({k: round(v, 2) for k, v in figures.items()}, indent=2))
    print(f"server logs: {logs}")


if __name__ == "__main__":
    main()
