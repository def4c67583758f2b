"""Several token sequences that continue one context, merged into a tree (a trie): shared prefixes
become shared nodes, so one forward over the tree's nodes gives the logits after every prefix of every
sequence (tree attention, as speculative decoders verify candidate trees).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenTree:
    """tokens: [nodes] each node's token id, parents before children; depths: [nodes] each node's depth
    (0: right after the context); ancestors: [nodes, nodes] bool, True where node j is node i or one
    of its ancestors (what node i attends besides the context); paths: per sequence, its nodes in
    order."""

    tokens: list[int]
    depths: list[int]
    ancestors: torch.Tensor
    paths: list[list[int]]


def token_tree(sequences: Sequence[Sequence[int]]) -> TokenTree:
    """The trie of ``sequences`` (token id lists; empty ones have empty paths)."""
    node_of: dict[tuple[int, int], int] = {}  # (parent node, -1 for the root; token) -> node
    tokens: list[int] = []
    depths: list[int] = []
    parents: list[int] = []
    paths: list[list[int]] = []
    for sequence in sequences:
        node, path = -1, []
        for token in sequence:
            key = (node, int(token))
            if key not in node_of:
                node_of[key] = len(tokens)
                tokens.append(int(token))
                depths.append(len(path))
                parents.append(node)
            node = node_of[key]
            path.append(node)
        paths.append(path)
    ancestors = torch.eye(len(tokens), dtype=torch.bool)
    for node, parent in enumerate(parents):
        if parent >= 0:  # parents come first: their rows are complete
            ancestors[node] |= ancestors[parent]
    return TokenTree(tokens, depths, ancestors, paths)
