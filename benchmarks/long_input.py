"""Peak memory and time of NER on long inputs: windows are decoded in bounded batches.

    python benchmarks/long_input.py [--chars 10000 100000] [--engine transformers|llamacpp|fake]

Builds a long text from the shared WNUT-17 training sentences (or a fixed paragraph when the
shared data is absent), runs ``RecognizeEntities`` on it once per size in a fresh process, and
prints windows, entities, seconds and the process's peak RSS. ``--engine fake`` measures castline's
own share (windows, span decoding, merging) with no model weights: ``FakeEngine`` marks words
that look like names.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

WNUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ner" / "wnut17_train.conll"
PARAGRAPH = "Ada Lovelace met Charles Babbage in London, and they wrote to Mary Somerville in Paris. "


def long_text(chars: int) -> str:
    if WNUT.is_file():
        words, sentences = [], []
        for line in WNUT.read_text(encoding="utf-8").splitlines():
            if line.strip():
                words.append(line.split("\t")[0].split(" ")[0])
            elif words:
                sentences.append(" ".join(words))
                words = []
        text = " ".join(sentences)
    else:
        text = PARAGRAPH * (chars // len(PARAGRAPH) + 1)
    while len(text) < chars:
        text += " " + text
    return text[:chars]


def run_one(chars: int, engine: str) -> dict:
    from castline.chains import RecognizeEntities
    from castline.chains.windows import split_windows
    from castline.models import FakeEngine, load_model

    model = FakeEngine() if engine == "fake" else load_model(engine=engine)
    chain = RecognizeEntities(["person", "location", "organization"], model=model)
    text = long_text(chars)
    started = time.perf_counter()
    result = chain.invoke(text)
    seconds = time.perf_counter() - started
    assert all(text[e.start : e.end] == e.text for e in result.entities)
    return {
        "chars": chars,
        "windows": len(split_windows(text, model, chain.window_tokens, chain.window_overlap)),
        "entities": len(result.entities),
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chars", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--engine", default="transformers")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.engine)))
        return
    for chars in args.chars:  # a fresh process per size: peak RSS is per run
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(chars), "--engine", args.engine],
            capture_output=True,
            text=True,
            check=True,
        )
        print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
