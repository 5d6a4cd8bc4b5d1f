"""Core performance figures for the embedded model on this machine, printed in one run.

    python benchmarks/core.py            (or: make bench)

Prints: load time (cold GGUF conversion vs cached safetensors), per-token time of constrained vs
unconstrained decoding at equal length, bf16 vs fp32, per-call time of a castline chain vs a
reused raw Outlines generator on the same prompt and type, batch-of-16 vs 16 invokes, and the
first structured call of a fresh process vs an unconstrained call of the same length.
Each ratio compares figures measured in this same run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Literal

import torch
from pydantic import BaseModel, Field

from castline.chains import StructuredChain
from castline.models import GenerationRequest, Prompt, TransformersEngine, load_model
from castline.models.loading import CACHE_ENV
from castline.schemas import output_spec


class Contact(BaseModel):
    name: str = Field(description="full name")
    age: int | None = Field(description="age in years, null if not given")
    city: str | None = Field(description="city, null if not given")
    urgent: bool


TEXTS = [
    "Anna Schmidt, 31, from Berlin, needs help urgently.",
    "Call back Tom when you can; he is 45 and lives in Leeds.",
    "Maria from Porto asked about her order.",
    "Urgent: Kofi Mensah (age 28) cannot log in.",
] * 4
Sentiment = Literal["positive", "negative"]


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    """Median wall time of ``repeat`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def unconstrained(model: TransformersEngine, prompt: Prompt, n_tokens: int) -> None:
    """Exactly ``n_tokens`` of free greedy decoding (EOS suppressed until then)."""
    input_ids = torch.tensor([model.encode_prompt(prompt)])
    with torch.inference_mode():
        model.hf_model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=n_tokens,
            min_new_tokens=n_tokens,
            do_sample=False,
            pad_token_id=model.tokenizer.pad_token_id,
        )


def load_times() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cache:
        os.environ[CACHE_ENV] = cache
        cold, _ = timed(lambda: load_model())
        cached, _ = timed(lambda: load_model(), repeat=3)
    del os.environ[CACHE_ENV]
    return {"cold_gguf_s": cold, "cached_s": cached}


def per_token(model: TransformersEngine, prompt: Prompt) -> dict[str, float]:
    spec = output_spec(Contact)
    request = GenerationRequest(prompt, spec, max_new_tokens=spec.default_max_new_tokens)
    model.generate([request])  # warm
    t_constrained, gens = timed(lambda: model.generate([request]), repeat=3)
    n = len(gens[0].token_ids) + 1  # + EOS
    t_free, _ = timed(lambda: unconstrained(model, prompt, n), repeat=3)
    return {"tokens": n, "constrained_ms": 1e3 * t_constrained / n, "unconstrained_ms": 1e3 * t_free / n}


def castline_vs_outlines(model: TransformersEngine) -> dict[str, float]:
    import outlines
    from outlines.inputs import Chat

    chain = StructuredChain(Sentiment, model=model)
    # Outlines applies the chat template to its input itself: give it the same messages.
    prompt = Chat(chain.template.render({**chain.partials, "text": TEXTS[0]}))
    raw = outlines.Generator(outlines.from_transformers(model.hf_model, model.tokenizer), Sentiment)
    budget = chain.spec.default_max_new_tokens
    raw(prompt, max_new_tokens=budget)  # Outlines' first call compiles its mask kernel; not counted
    chain.invoke(TEXTS[0])
    # Interleaved, so drift in machine load hits both sides alike.
    raw_times, chain_times = [], []
    for _ in range(15):
        t, raw_out = timed(lambda: raw(prompt, max_new_tokens=budget))
        raw_times.append(t)
        t, chain_out = timed(lambda: chain.invoke(TEXTS[0]))
        chain_times.append(t)
    return {
        "raw_outlines_ms": 1e3 * statistics.median(raw_times),
        "castline_ms": 1e3 * statistics.median(chain_times),
        "same_output": raw_out == chain_out,
    }


def batch_vs_loop(model: TransformersEngine) -> dict[str, float]:
    chain = StructuredChain(Contact, model=model)
    chain.invoke(TEXTS[0])
    t_loop, looped = timed(lambda: [chain.invoke(t) for t in TEXTS])
    t_batch, batched = timed(lambda: chain.batch(TEXTS))
    return {"loop_s": t_loop, "batch_s": t_batch, "equal": looped == batched}


def scoring_seconds(model: TransformersEngine) -> float:
    """Label scoring (the classification path) of 8 texts over 20 labels."""
    from castline.chains.classify import Classify

    chain = Classify([f"topic_{i}_{w}" for i, w in enumerate("abcdefghijklmnopqrst")], model=model)
    chain.batch(TEXTS[:2])  # prior and prefix cache, not counted
    seconds, _ = timed(lambda: chain.batch(TEXTS[4:12]))
    return seconds


FIRST_CALL = r"""
import json, time, torch
from castline.chains import StructuredChain
from castline.models import GenerationRequest, load_model
from benchmarks.core import Contact, TEXTS, unconstrained
model = load_model()
unconstrained(model, model.chat_prompt([{"role": "user", "content": "hi"}]), 2)  # torch warm-up
started = time.perf_counter()
chain = StructuredChain(Contact, model=model)
request = GenerationRequest(chain.prompt_for({"text": TEXTS[0]}), chain.spec, max_new_tokens=256)
out = model.generate([request])[0]
first = time.perf_counter() - started
started = time.perf_counter()
unconstrained(model, chain.prompt_for({"text": TEXTS[0]}), len(out.token_ids) + 1)
free = time.perf_counter() - started
print(json.dumps({"first_structured_s": first, "unconstrained_same_length_s": free}))
"""


def first_call() -> dict[str, float]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", FIRST_CALL], capture_output=True, text=True, check=True, cwd=root
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cuda={torch.cuda.is_available()}")
    loads = load_times()
    print(
        f"load: cold GGUF {loads['cold_gguf_s']:.2f} s, cached {loads['cached_s']:.2f} s "
        f"({loads['cold_gguf_s'] / loads['cached_s']:.0f}x)"
    )

    model = load_model()
    prompt = StructuredChain(Contact, model=model).prompt_for({"text": TEXTS[0]})
    tok = per_token(model, prompt)
    print(
        f"per token ({model.dtype}, {tok['tokens']} tokens): constrained {tok['constrained_ms']:.1f} ms, "
        f"unconstrained {tok['unconstrained_ms']:.1f} ms, ratio "
        f"{tok['constrained_ms'] / tok['unconstrained_ms']:.3f} (target <= 1.05)"
    )
    bf16_model = load_model(dtype="bfloat16")
    bf16 = per_token(bf16_model, prompt)
    print(
        f"per token bfloat16: constrained {bf16['constrained_ms']:.1f} ms -> bf16 decodes "
        f"{tok['constrained_ms'] / bf16['constrained_ms']:.2f}x faster than the default"
    )
    fp32_scoring, bf16_scoring = scoring_seconds(model), scoring_seconds(bf16_model)
    print(
        f"label scoring, 8 texts x 20 labels: float32 {fp32_scoring:.2f} s, bfloat16 {bf16_scoring:.2f} s "
        f"-> bf16 scores {fp32_scoring / bf16_scoring:.2f}x faster"
    )

    vs = castline_vs_outlines(model)
    print(
        f"per call, label type: raw Outlines generator {vs['raw_outlines_ms']:.1f} ms, castline chain "
        f"{vs['castline_ms']:.1f} ms, ratio {vs['castline_ms'] / vs['raw_outlines_ms']:.3f} "
        f"(target <= 1.05; same output: {vs['same_output']})"
    )

    b = batch_vs_loop(model)
    print(
        f"16 Contact extractions: 16 invokes {b['loop_s']:.2f} s, one batch {b['batch_s']:.2f} s, "
        f"speed-up {b['loop_s'] / b['batch_s']:.2f}x (target >= 2; identical results: {b['equal']})"
    )

    f = first_call()
    print(
        f"fresh process: first structured call {f['first_structured_s']:.2f} s vs unconstrained call of "
        f"the same length {f['unconstrained_same_length_s']:.2f} s, extra "
        f"{f['first_structured_s'] - f['unconstrained_same_length_s']:.2f} s (target <= 1 s)"
    )


if __name__ == "__main__":
    main()
