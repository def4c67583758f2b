"""Candidate continuations merged into a token tree: shared prefixes are shared nodes, each node sees
exactly its ancestors, and each sequence's path spells it."""

import pytest
import torch

from asr.llm.token_tree import token_tree


@pytest.mark.parametrize("sequences", [
    pytest.param([[5, 6, 7], [5, 6, 8], [5, 9], [4]], id="branching"),
    pytest.param([[1, 2], [1, 2], [1, 2, 3]], id="duplicates-and-extensions"),
    pytest.param([[], [3, 3, 3]], id="empty-and-repeated-token"),
    pytest.param([], id="none"),
])
def test_token_tree(sequences):
    tree = token_tree(sequences)
    distinct_prefixes = {tuple(s[: i + 1]) for s in sequences for i in range(len(s))}
    assert len(tree.tokens) == len(distinct_prefixes)  # one node per distinct prefix
    for sequence, path in zip(sequences, tree.paths, strict=True):
        assert [tree.tokens[node] for node in path] == sequence
        assert [tree.depths[node] for node in path] == list(range(len(sequence)))
        for depth, node in enumerate(path):  # a node sees itself and the nodes before it on its path
            assert set(torch.nonzero(tree.ancestors[node]).flatten().tolist()) == set(path[: depth + 1])
            assert all(parent < node for parent in path[:depth])  # parents come first
