"""Receipt extraction where every field is copied from the OCR text (spans=True)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from castline.chains.extract import Extract


class Receipt(BaseModel):
    company: str = Field(description="name of the shop that issued the receipt")
    date: str = Field(description="date of purchase as printed")
    total: str = Field(description="total amount paid")


EXAMPLE_TEXT = "GREEN LEAF GROCER 12 HIGH ST DATE 03/04/2021 APPLES 2.40 BREAD 1.10 TOTAL 3.50 THANK YOU"
RECEIPTS = [
    "SUNRISE HARDWARE SDN BHD NO 5 JALAN MAJU 18/02/2019 10:42 HAMMER 25.00 NAILS 4.50 TOTAL RM 29.50",
    "CITY BOOKS LTD 221 MAIN ROAD INVOICE 7781 DATE: 11-09-2022 NOVEL 12.99 TOTAL DUE 12.99 CARD",
]


def main() -> None:
    extract = Extract(
        Receipt,
        spans=True,
        examples=[
            ({"text": EXAMPLE_TEXT}, Receipt(company="GREEN LEAF GROCER", date="03/04/2021", total="3.50"))
        ],
    )
    for text, receipt in zip(RECEIPTS, extract.batch(RECEIPTS), strict=True):
        print(f"{text}\n  -> {receipt!r}")


if __name__ == "__main__":
    main()
