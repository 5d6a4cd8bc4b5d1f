"""Task chains on the shared data, next to a plain Outlines zero-shot baseline, in one run.

    python benchmarks/tasks.py [--scale 1.0]

For each task the same sample goes through (a) castline's chain as a user would configure it
(label scoring with calibration, span-constrained decoding, few-shot examples from the training
split) and (b) plain Outlines written the way its docs suggest: a prompt string, an output type,
the string parsed afterwards. Data is read from ../shared/data (see its SOURCES.md).
It also times label scoring against the naive way (every prompt+label through the model with
full logits) on the same items.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, Field

from castline.chains.classify import Classify
from castline.chains.extract import Extract
from castline.chains.ner import RecognizeEntities
from castline.chains.qa import AnswerQuestion
from castline.evaluation.evaluate import Report, evaluate, run_batched
from castline.evaluation.metrics import accuracy, entity_prf, field_accuracy, macro_f1, squad_scores
from castline.evaluation.readers import (
    ExtractionExample,
    LabeledText,
    read_conll,
    read_labeled_csv,
    read_squad,
    select,
)
from castline.models import TransformersEngine, load_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WNUT_TYPES = {
    "person": "a person's name or username",
    "location": "a place: city, country, street, venue",
    "group": "a team, band, organisation or other group of people",
    "creative-work": "a song, film, book, show, game or other work",
    "corporation": "a company or brand",
    "product": "a product or consumer good",
}


class Receipt(BaseModel):
    company: str = Field(description="name of the shop or company that issued the receipt")
    date: str = Field(description="date of the receipt as printed")
    address: str = Field(description="the shop's address, all lines joined with spaces")
    total: str = Field(description="total amount paid, digits as printed")


def outlines_generator(model: TransformersEngine, output_type: object):
    import outlines

    return outlines.Generator(outlines.from_transformers(model.hf_model, model.tokenizer), output_type)


def baseline_report(task: str, n: int, metrics: dict[str, float], errors: int, seconds: float) -> Report:
    return Report(task=task, n=n, metrics=metrics, errors=errors, seconds=seconds)


def plain_outlines_classify(model: TransformersEngine, data: list[LabeledText], labels: list[str]) -> Report:
    generate = outlines_generator(model, Literal[tuple(labels)])
    started, predicted, errors = time.perf_counter(), [], 0

    def call(items: list[LabeledText]) -> list[str]:
        prompts = [
            f"Classify the text into one of these labels: {', '.join(labels)}.\nText: {x.text}\nLabel:"
            for x in items
        ]
        return list(generate.batch(prompts, max_new_tokens=32))

    predicted = run_batched(call, data, 16, "outlines classify")
    gold = [x.label for x in data]
    return baseline_report(
        "classify",
        len(data),
        {"accuracy": accuracy(gold, predicted), "macro_f1": macro_f1(gold, predicted, labels)},
        errors,
        time.perf_counter() - started,
    )


def plain_outlines_ner(model: TransformersEngine, data: list) -> Report:
    class Mention(BaseModel):
        text: str
        label: Literal[tuple(WNUT_TYPES)]  # type: ignore[valid-type]

    class Mentions(BaseModel):
        entities: list[Mention]

    generate = outlines_generator(model, Mentions)
    started, errors = time.perf_counter(), 0

    def call(items: list) -> list[set]:
        nonlocal errors
        prompts = [
            f"List the named entities ({', '.join(WNUT_TYPES)}) in this text as JSON.\nText: {x.text}"
            for x in items
        ]
        out = []
        for raw, x in zip(generate.batch(prompts, max_new_tokens=128), items, strict=True):
            try:
                found = set()
                for m in Mentions.model_validate_json(raw).entities:
                    at = x.text.find(m.text)  # what a user does: find the string, first occurrence
                    if at >= 0 and m.text:
                        found.add((at, at + len(m.text), m.label))
                out.append(found)
            except Exception:
                errors += 1
                out.append(set())
        return out

    predicted = run_batched(call, data, 8, "outlines ner")
    return baseline_report(
        "ner",
        len(data),
        entity_prf([set(x.entities) for x in data], predicted),
        errors,
        time.perf_counter() - started,
    )


def plain_outlines_qa(model: TransformersEngine, data: list) -> Report:
    class Reply(BaseModel):
        answer: str

    generate = outlines_generator(model, Reply)
    started, errors = time.perf_counter(), 0

    def call(items: list) -> list[str]:
        nonlocal errors
        prompts = [
            f"Context: {x.context}\nQuestion: {x.question}\n"
            "Answer with a short span from the context, as JSON."
            for x in items
        ]
        out = []
        for raw in generate.batch(prompts, max_new_tokens=64):
            try:
                out.append(Reply.model_validate_json(raw).answer)
            except Exception:
                errors += 1
                out.append("")
        return out

    predicted = run_batched(call, data, 8, "outlines qa")
    return baseline_report(
        "qa",
        len(data),
        squad_scores([[a for a, _ in x.answers] for x in data], predicted),
        errors,
        time.perf_counter() - started,
    )


def plain_outlines_extract(model: TransformersEngine, data: list[ExtractionExample]) -> Report:
    generate = outlines_generator(model, Receipt)
    started, errors = time.perf_counter(), 0

    def call(items: list) -> list:
        nonlocal errors
        prompts = [
            f"Extract company, date, address and total from this receipt as JSON.\n{x.text}" for x in items
        ]
        out = []
        for raw in generate.batch(prompts, max_new_tokens=256):
            try:
                out.append(Receipt.model_validate_json(raw).model_dump())
            except Exception:
                errors += 1
                out.append(None)
        return out

    predicted = run_batched(call, data, 4, "outlines extract")
    return baseline_report(
        "extract",
        len(data),
        field_accuracy([x.output for x in data], predicted),
        errors,
        time.perf_counter() - started,
    )


def naive_label_scoring_seconds(model: TransformersEngine, chain: Classify, texts: list[str]) -> float:
    """Every prompt+label sequence through the model with full logits, one at a time."""
    eos = model.tokenizer.eos_token_id
    started = time.perf_counter()
    with torch.inference_mode():
        for text in texts:
            prompt = model.encode_prompt(chain.prompt_for(text))
            for name in chain.labels.names:
                label = [*model.tokenizer(name, add_special_tokens=False).input_ids, eos]
                logits = model.hf_model(torch.tensor([prompt + label])).logits
                logprobs = torch.log_softmax(logits[0, len(prompt) - 1 : -1].float(), dim=-1)
                logprobs.gather(1, torch.tensor(label)[:, None]).sum()
    return time.perf_counter() - started


def sms_data(n: int, seed: int) -> tuple[list[LabeledText], list[LabeledText]]:
    rows = []
    for line in (
        (DATA / "classification" / "sms_spam_collection.tsv").read_text(encoding="utf-8").splitlines()
    ):
        label, text = line.rstrip("\r").split("\t", 1)
        rows.append(LabeledText(text, label))
    random.Random(seed).shuffle(rows)
    return rows[:n], rows[n:]


def few_shot_per_label(pool: list[LabeledText], labels: list[str], k: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    examples = []
    for label in labels:
        matching = [x for x in pool if x.label == label]
        examples += [{"text": x.text, "label": label} for x in rng.sample(matching, k)]
    rng.shuffle(examples)
    return examples


def show(name: str, castline: Report, baseline: Report) -> None:
    print(f"\n## {name}")
    print(f"  castline        {castline.summary()}")
    print(f"  plain Outlines  {baseline.summary()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the default sample sizes")
    parser.add_argument("--only", nargs="*", default=["sms", "banking", "speed", "ner", "qa", "extract"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = lambda n: max(8, int(n * args.scale))  # noqa: E731
    if not DATA.is_dir():
        sys.exit(f"shared data not found at {DATA}")
    model = load_model()
    print(f"model {model.name}, {model.dtype}, torch threads {torch.get_num_threads()}")

    if "sms" in args.only:
        test, pool = sms_data(size(300), args.seed)
        labels = ["ham", "spam"]
        chain = Classify(
            {
                "ham": "an ordinary personal message between people",
                "spam": "unsolicited advertising, prizes or scams",
            },
            model=model,
            examples=few_shot_per_label(pool, labels, 2, args.seed),
        )
        show(
            "SMS spam (accuracy, macro-F1)",
            evaluate(chain, test),
            plain_outlines_classify(model, test, labels),
        )
        uncal = Classify(chain.labels, model=model, examples=chain.partials["examples"], calibrate=False)
        print(f"  castline, calibration off: {evaluate(uncal, test).summary()}")

    if "banking" in args.only or "speed" in args.only:
        train = read_labeled_csv(DATA / "classification" / "banking77_train.csv", label_column="category")
        test = select(
            read_labeled_csv(DATA / "classification" / "banking77_test.csv", label_column="category"),
            sample=size(200),
            seed=args.seed,
        )
        labels = sorted({x.label for x in train})
    if "banking" in args.only:
        chain = Classify(labels, model=model, examples=few_shot_per_label(train, labels, 1, args.seed))
        show(
            "BANKING77, 77 intents (accuracy, macro-F1)",
            evaluate(chain, test),
            plain_outlines_classify(model, test, labels),
        )
        zero = Classify(labels, model=model)
        print(f"  castline zero-shot, calibrated: {evaluate(zero, test).summary()}")

    if "speed" in args.only:
        six = labels[:6]
        items = [x.text for x in test[: size(50)]]
        chain = Classify(six, model=model)
        naive = naive_label_scoring_seconds(model, chain, items)
        started = time.perf_counter()
        chain.batch(items)
        ours = time.perf_counter() - started
        print(
            f"\n## label scoring speed, {len(items)} items x 6 labels: "
            f"naive {naive:.1f} s, castline {ours:.1f} s, {naive / ours:.1f}x"
        )

    if "ner" in args.only:
        train = read_conll(DATA / "ner" / "wnut17_train.conll")
        dev = select(read_conll(DATA / "ner" / "wnut17_dev.conll"), sample=size(200), seed=args.seed)
        with_entities = [x for x in train if x.entities]
        shots = [
            {
                "text": x.text,
                "entities": [{"text": x.text[s:e], "label": label} for s, e, label in x.entities],
            }
            for x in random.Random(args.seed).sample(with_entities, 4)
        ]
        chain = RecognizeEntities(WNUT_TYPES, model=model, examples=shots)
        show("WNUT-17 dev (entity-level strict P/R/F1)", evaluate(chain, dev), plain_outlines_ner(model, dev))

    if "qa" in args.only:
        questions = read_squad(DATA / "qa" / "xquad_en_dev.json")
        # Few-shot examples come from the first article's contexts, which are left out of the sample.
        held_out = {x.context for x in questions[:30]}
        shots = [
            {"question": x.question, "context": x.context, "answer": x.answers[0][0]}
            for x in questions[:30:10]
        ]
        data = select([x for x in questions if x.context not in held_out], sample=size(150), seed=args.seed)
        chain = AnswerQuestion(model=model, allow_no_answer=False, examples=shots)
        show("XQuAD en dev (SQuAD EM/F1)", evaluate(chain, data), plain_outlines_qa(model, data))

    if "extract" in args.only:
        rows = [
            json.loads(line) for line in (DATA / "extraction" / "sroie_train.jsonl").read_text().splitlines()
        ]
        # OCR segments joined by spaces: SROIE values (addresses) span several segments.
        records = [ExtractionExample(" ".join(r["words"]), r["entities"]) for r in rows]
        shots_pool, evaluation_pool = records[:20], records[20:]
        data = select(evaluation_pool, sample=size(60), seed=args.seed)
        shot = shots_pool[0]
        chain = Extract(
            Receipt, model=model, spans=True, examples=[({"text": shot.text}, Receipt(**shot.output))]
        )
        show("SROIE receipts (field accuracy)", evaluate(chain, data), plain_outlines_extract(model, data))


if __name__ == "__main__":
    main()
