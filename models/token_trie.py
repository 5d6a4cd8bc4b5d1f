"""``TokenTrie``: candidate token sequences merged on their shared prefixes (no torch).

Label scoring in every engine computes each trie node once: "card_arrival" and "card_payment"
share the tokens of "card_", and the distribution after a node serves all of its children.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenTrie:
    """Candidate token sequences merged on shared prefixes."""

    tokens: tuple[int, ...]  # token of each node
    parents: tuple[int, ...]  # parent node, -1 for a child of the prompt
    depths: tuple[int, ...]
    paths: tuple[tuple[int, ...], ...]  # node indices spelling each candidate

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]]) -> TokenTrie:
        tokens: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        children: dict[tuple[int, int], int] = {}
        paths = []
        for sequence in sequences:
            if not sequence:
                raise ValueError("every candidate needs at least one token")
            node, path = -1, []
            for depth, token in enumerate(sequence):
                key = (node, token)
                if key not in children:
                    children[key] = len(tokens)
                    tokens.append(token)
                    parents.append(node)
                    depths.append(depth)
                node = children[key]
                path.append(node)
            paths.append(tuple(path))
        return cls(tuple(tokens), tuple(parents), tuple(depths), tuple(paths))

    def __len__(self) -> int:
        return len(self.tokens)

    def children(self, node: int) -> list[int]:
        """Nodes whose parent is ``node`` (-1: the roots)."""
        return [i for i, parent in enumerate(self.parents) if parent == node]
