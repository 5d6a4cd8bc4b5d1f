"""Regex output: normalise dates written any way into ISO 8601."""

from __future__ import annotations

from castline.chains import StructuredChain
from castline.schemas import Regex

NOTES = [
    "Invoice paid on 14 March 2023.",
    "Delivery expected 2024/01/09.",
    "Meeting moved to July 4th, 2025.",
]


def main() -> None:
    to_iso = StructuredChain(
        Regex(r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"),
        partial_variables={"instruction": "Write the date mentioned in the text as YYYY-MM-DD."},
    )
    for note, date in zip(NOTES, to_iso.batch(NOTES), strict=True):
        print(f"{date}  <- {note}")


if __name__ == "__main__":
    main()
