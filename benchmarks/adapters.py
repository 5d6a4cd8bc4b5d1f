"""LoRA fine-tuning gains on the embedded model: before and after, with training time, in one run.

    python benchmarks/adapters.py [--scale 1.0]

- BANKING77: train on a sample of the train split, evaluate on a sample of the test split.
- WNUT-17: train on train sentences that hold entities, evaluate on dev (entity-level strict F1).
- XQuAD: train on the questions of the first articles, evaluate on the others (EM/F1).
Every chain trains with the library defaults (LoraSettings()), epochs aside (--epochs). Data: ../shared/data.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from castline.chains import AnswerQuestion, Classify, RecognizeEntities
from castline.evaluation.evaluate import evaluate
from castline.evaluation.readers import read_conll, read_labeled_csv, read_squad, select
from castline.models import load_model
from castline.models.transformers.adapters import LoraSettings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WNUT_TYPES = ["person", "location", "group", "creative-work", "corporation", "product"]


def line(task: str, before, after, seconds: float, n_train: int) -> None:
    print(f"\n## {task}: {n_train} training examples, {seconds:.0f} s of training")
    print(f"  untrained  {before.summary()}")
    print(f"  adapter    {after.summary()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--only", nargs="*", default=["banking", "wnut", "xquad"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1, help="training epochs (LoraSettings.epochs)")
    args = parser.parse_args()
    settings = LoraSettings(epochs=args.epochs, seed=args.seed)
    size = lambda n: max(8, int(n * args.scale))  # noqa: E731
    model = load_model()
    print(f"model {model.name}, {model.dtype}, torch threads {torch.get_num_threads()}")

    if "banking" in args.only:
        train = read_labeled_csv(DATA / "classification" / "banking77_train.csv", label_column="category")
        test = read_labeled_csv(DATA / "classification" / "banking77_test.csv", label_column="category")
        labels = sorted({x.label for x in train})
        sample = select(train, sample=size(800), seed=args.seed)
        test = select(test, sample=size(150), seed=args.seed)
        chain = Classify(labels, model=model, template="classify_short")
        before = evaluate(chain, test)
        report = chain.fine_tune(
            [({"text": x.text}, x.label) for x in sample], name="banking77", settings=settings
        )
        line("BANKING77 (77 intents)", before, evaluate(chain, test), report.seconds, len(sample))

    if "wnut" in args.only:
        # Most WNUT sentences have no entity; trained on those, the adapter learns to say nothing.
        train = [x for x in read_conll(DATA / "ner" / "wnut17_train.conll") if x.entities]
        dev = select(read_conll(DATA / "ner" / "wnut17_dev.conll"), sample=size(100), seed=args.seed)
        sample = select(train, sample=size(400), seed=args.seed)
        chain = RecognizeEntities(WNUT_TYPES, model=model)
        before = evaluate(chain, dev)
        examples = [
            (
                {"text": x.text},
                [{"text": x.text[s:e], "label": lab, "start": s, "end": e} for s, e, lab in x.entities],
            )
            for x in sample
        ]
        report = chain.fine_tune(examples, name="wnut17", settings=settings)
        line("WNUT-17 (entity-level strict F1)", before, evaluate(chain, dev), report.seconds, len(sample))

    if "xquad" in args.only:
        questions = read_squad(DATA / "qa" / "xquad_en_dev.json")
        contexts = list(dict.fromkeys(x.context for x in questions))
        cut = set(contexts[: len(contexts) // 2])
        train = [x for x in questions if x.context in cut]
        test = select([x for x in questions if x.context not in cut], sample=size(80), seed=args.seed)
        sample = random.Random(args.seed).sample(train, min(len(train), size(300)))
        chain = AnswerQuestion(model=model)
        before = evaluate(chain, test)
        started = time.perf_counter()
        report = chain.fine_tune(
            [({"question": x.question, "context": x.context}, x.answers[0][0]) for x in sample],
            name="xquad",
            settings=settings,
        )
        line(
            "XQuAD en (SQuAD EM/F1)",
            before,
            evaluate(chain, test),
            report.seconds or time.perf_counter() - started,
            len(sample),
        )


if __name__ == "__main__":
    main()
