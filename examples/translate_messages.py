"""Translate interface messages into French, part by part for long texts."""

from __future__ import annotations

from castline.chains import Translate

MESSAGES = ["Good morning!", "Your order has been shipped.", "Thank you very much."]


def main() -> None:
    translate = Translate("French", source_language="English")
    for message, result in zip(MESSAGES, translate.batch(MESSAGES), strict=True):
        print(f"{message:>30}  ->  {result.translation}")


if __name__ == "__main__":
    main()
