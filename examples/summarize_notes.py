"""Summarize a short report: one paragraph of at most ``max_words`` words, ending a sentence."""

from __future__ import annotations

from castline.chains import Summarize

REPORT = (
    "The city council met on Tuesday evening to discuss the new public library. After two hours of "
    "debate, members voted seven to two to build it on the site of the old bus station downtown. "
    "Construction is planned to start next spring and to take eighteen months. The library will have "
    "a children's wing, study rooms and a cafe, and will stay open until ten at night."
)


def main() -> None:
    summary = Summarize(max_words=40).invoke(REPORT)
    print(f"summary ({len(summary.summary.split())} words): {summary.summary}")


if __name__ == "__main__":
    main()
