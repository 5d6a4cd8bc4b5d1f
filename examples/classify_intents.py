"""Intent classification with a probability for every label (scored, not written by the model)."""

from __future__ import annotations

from castline.chains.classify import Classify

INTENTS = {
    "card_arrival": "the customer is waiting for a card to arrive",
    "lost_or_stolen_card": "the card was lost or stolen",
    "exchange_rate": "questions about currency exchange rates",
    "transfer_not_received": "a transfer did not reach the recipient",
}
EXAMPLES = [
    {"text": "My new card still hasn't come in the post.", "label": "card_arrival"},
    {"text": "Someone took my wallet with my card in it.", "label": "lost_or_stolen_card"},
]
MESSAGES = [
    "It's been ten days and no card yet, when will it arrive?",
    "I think I left my card at the restaurant, please freeze it",
    "What rate do you use to convert pounds to euros?",
    "My friend says the money I sent never showed up.",
]


def main() -> None:
    classify = Classify(INTENTS, examples=EXAMPLES)
    for message, result in zip(MESSAGES, classify.batch(MESSAGES), strict=True):
        ranked = sorted(result.probabilities.items(), key=lambda kv: -kv[1])
        top = ", ".join(f"{label} {p:.2f}" for label, p in ranked[:3])
        print(f"{result.label:>22}  <- {message}\n{'':>24}({top})")


if __name__ == "__main__":
    main()
