"""SharedSelection: prefills at positions an earlier one covered reuse its blocks; others choose anew."""

import torch

from asr.attention.shared_selection import SharedSelection


def chooser(calls: list, query_blocks: int, mark: int):
    def choose() -> torch.Tensor:
        calls.append(mark)
        return torch.full((2, query_blocks, 3), mark, dtype=torch.int32)  # [kv_heads, query blocks, width]
    return choose


def test_covered_positions_reuse_the_choice_and_others_choose_anew():
    shared, calls = SharedSelection(), []
    first = shared.blocks(0, 70, 80, 8, chooser(calls, 2, 1))  # query blocks 8 and 9
    assert calls == [1] and first.shape == (2, 2, 3)
    assert torch.equal(shared.blocks(0, 73, 79, 8, chooser(calls, 2, 2)), first[:, 1:2])  # block 9 only
    assert torch.equal(shared.blocks(0, 64, 72, 8, chooser(calls, 1, 3)), first[:, :1])  # block 8 only
    assert calls == [1]
    shared.blocks(1, 73, 79, 8, chooser(calls, 1, 4))  # another layer chooses for itself
    assert calls == [1, 4]
    wider = shared.blocks(0, 70, 90, 8, chooser(calls, 3, 5))  # block 10 was not covered
    assert calls == [1, 4, 5] and int(wider[0, 0, 0]) == 5
    # the new choice is the one kept
    assert torch.equal(shared.blocks(0, 80, 81, 8, chooser(calls, 1, 6)), wider[:, 2:3])
    assert calls == [1, 4, 5]
