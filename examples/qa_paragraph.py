"""Extractive QA: answers are spans of the paragraph, with offsets; "no answer" is explicit."""

from __future__ import annotations

from castline.chains.qa import AnswerQuestion

PARAGRAPH = (
    "The Eiffel Tower was built for the 1889 World's Fair in Paris. Gustave Eiffel's company "
    "designed and built it, and at 330 metres it was the tallest man-made structure in the world "
    "until 1930."
)
QUESTIONS = [
    "For which event was the Eiffel Tower built?",
    "Whose company designed the tower?",
    "How tall is the tower?",
    "What is the capital of Peru?",
]


def main() -> None:
    qa = AnswerQuestion()
    answers = qa.batch([{"question": q, "context": PARAGRAPH} for q in QUESTIONS])
    for question, answer in zip(QUESTIONS, answers, strict=True):
        where = f"[{answer.start}:{answer.end}]" if answer.has_answer else "(no answer)"
        print(f"{question}\n  -> {answer.text!r} {where} score {answer.score:.2f}")


if __name__ == "__main__":
    main()
