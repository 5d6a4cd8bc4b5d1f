"""Named entities as exact spans of a news sentence, with offsets, BIO tags and pipeline dicts."""

from __future__ import annotations

from castline.chains.ner import RecognizeEntities

TYPES = {
    "person": "a person's name",
    "organization": "a company, team or institution",
    "location": "a city, country or place",
}
EXAMPLES = [
    {
        "text": "Angela Merkel visited Renault in Paris on Monday.",
        "entities": [
            {"text": "Angela Merkel", "label": "person"},
            {"text": "Renault", "label": "organization"},
            {"text": "Paris", "label": "location"},
        ],
    }
]
SENTENCE = "Satya Nadella said Microsoft will open a new office in Nairobi, and Nairobi welcomed the news."


def main() -> None:
    ner = RecognizeEntities(TYPES, examples=EXAMPLES)
    result = ner.invoke(SENTENCE)
    print(SENTENCE)
    for entity in result.entities:
        span = f"{entity.start}:{entity.end}"
        print(f"  {entity.label:>12} {span:>7} {entity.text!r} (score {entity.score:.2f})")
    print("  BIO:", " ".join(f"{token}/{tag}" for token, tag in result.to_bio()))
    print("  pipeline format:", result.to_pipeline()[:1])


if __name__ == "__main__":
    main()
