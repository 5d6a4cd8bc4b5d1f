"""Pydantic output: pull a typed contact record out of free text."""

from __future__ import annotations

import enum

from pydantic import BaseModel, Field

from castline.chains import StructuredChain


class Urgency(enum.Enum):
    LOW = "low"
    HIGH = "high"


class Contact(BaseModel):
    name: str = Field(description="full name of the person who wrote")
    age: int | None = Field(description="age in years, null if not stated")
    city: str | None = Field(description="city the person lives in, null if not stated")
    urgency: Urgency = Field(description="high if the message asks for help now")


MESSAGES = [
    "Hi, I'm Anna Schmidt (31) from Berlin and my card was stolen, please block it now!",
    "This is Tom, 45, Leeds. No rush, but could you send me last year's statements?",
]


def main() -> None:
    extract = StructuredChain(Contact)
    for message, contact in zip(MESSAGES, extract.batch(MESSAGES), strict=True):
        print(f"{message}\n  -> {contact!r}")


if __name__ == "__main__":
    main()
