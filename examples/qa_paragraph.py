"""Extractive QA: answers are spans of the paragraph, with offsets; "no answer" is explicit."""

from __future__ import annotations

from castline.chains.qa import AnswerQuestion
from castline.schemas.results import Answer

PARAGRAPH = (
    "The Eiffel Tower was built for the 1889 World's Fair in Paris. Gustave Eiffel's company "
    "designed and built it, and at 330 metres it was the tallest man-made structure in the world "
    "until 1930."
)
QUESTIONS = [
    "For which event was the Eiffel Tower built?",
    "Whose company designed the tower?",
    "How tall is the tower?",
]
CONTEXTS = ["Lima is the capital of Peru.", PARAGRAPH, "Rome has many fountains."]


def show(question: str, answer: Answer) -> None:
    where = (
        f"[{answer.start}:{answer.end}] of context {answer.context_index}"
        if answer.has_answer
        else "(no answer)"
    )
    print(f"{question}\n  -> {answer.text!r} {where}, score {answer.score:.2f}")


def main() -> None:
    qa = AnswerQuestion()  # always answers with a span of the context
    answers = qa.batch([{"question": q, "context": PARAGRAPH} for q in QUESTIONS])
    for question, answer in zip(QUESTIONS, answers, strict=True):
        show(question, answer)
    # One question over several contexts; "no answer" allowed as an explicit outcome.
    question = "Who designed the Eiffel Tower?"
    show(question, AnswerQuestion(allow_no_answer=True).invoke({"question": question, "context": CONTEXTS}))


if __name__ == "__main__":
    main()
