"""Train an intent classifier adapter from a CSV, save it, reload it in a fresh process, classify.

Reads BANKING77 from ../shared/data when it is there (4 intents, 30 examples each); otherwise a
small built-in set. Training takes well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import csv
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from castline.chains import Classify
from castline.models.transformers.adapters import LoraSettings

INTENTS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "transfer_not_received_by_recipient"]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "classification" / "banking77_train.csv"
FALLBACK = {
    "card_arrival": [
        "Where is my new card?",
        "My card has not arrived yet",
        "When will the card be delivered?",
    ],
    "lost_or_stolen_card": [
        "I lost my card",
        "My card was stolen yesterday",
        "Someone took my wallet and card",
    ],
    "exchange_rate": [
        "What exchange rate do you use?",
        "How much is a dollar in euros?",
        "Is the rate fixed?",
    ],
    "transfer_not_received_by_recipient": [
        "My friend did not get the money I sent",
        "The transfer never reached the recipient",
        "Recipient says no payment arrived",
    ],
}
RELOAD = """
import sys
from castline.chains import Classify
chain = Classify(sys.argv[2].split(","), template="classify_short").use_adapter(sys.argv[1])
for text in ["my card still hasn't come", "what rate for pounds to yen?"]:
    print(f"  fresh process: {chain.invoke(text).label:>36} <- {text}")
"""


def write_training_csv(path: Path) -> None:
    rows: list[tuple[str, str]] = []
    if SHARED.is_file():
        with SHARED.open(encoding="utf-8") as f:
            by_intent: dict[str, list[str]] = {}
            for row in csv.DictReader(f):
                by_intent.setdefault(row["category"], []).append(row["text"])
        for intent in INTENTS:
            rows += [(t, intent) for t in random.Random(0).sample(by_intent[intent], 30)]
    else:
        rows = [(t, intent) for intent, texts in FALLBACK.items() for t in texts * 4]
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data, adapter = Path(tmp) / "intents.csv", Path(tmp) / "intent-adapter"
        write_training_csv(data)
        with data.open(encoding="utf-8") as f:
            examples = [({"text": r["text"]}, r["label"]) for r in csv.DictReader(f)]
        chain = Classify(INTENTS, template="classify_short")
        report = chain.fine_tune(examples, settings=LoraSettings(epochs=2), save_to=adapter)
        print(f"trained on {report.examples} examples in {report.seconds:.0f} s")
        print(f"held-out loss by step: {report.eval_losses}")
        for text in ["my card still hasn't come", "what rate for pounds to yen?"]:
            print(f"  this process:  {chain.invoke(text).label:>36} <- {text}")
        subprocess.run([sys.executable, "-c", RELOAD, str(adapter), ",".join(INTENTS)], check=True)


if __name__ == "__main__":
    main()
