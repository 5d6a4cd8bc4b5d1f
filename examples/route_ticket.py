"""Label-set output: route support messages to a team (a Literal decodes to one of its values)."""

from __future__ import annotations

from typing import Literal

from castline.chains import StructuredChain

Team = Literal["cards", "transfers", "account"]

TICKETS = [
    "My card hasn't arrived yet, it's been two weeks.",
    "I sent money to my brother but he never received the transfer.",
    "How do I change the email address on my profile?",
]


def main() -> None:
    route = StructuredChain(
        Team,
        partial_variables={"instruction": "Which team should handle this banking support message?"},
    )
    for ticket, team in zip(TICKETS, route.batch(TICKETS), strict=True):
        print(f"{team:>9}  <- {ticket}")


if __name__ == "__main__":
    main()
