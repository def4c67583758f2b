"""Random block choices in the layout ``select_blocks`` gives: per (kv head, query block) a causal set
of key blocks that always holds the diagonal, ascending, -1 padded."""

import torch

from asr.attention.block_selection import prefill_blocks


def random_blocks(kv_heads: int, start: int, length: int, block_size: int, keep: float,
                  seed: int) -> torch.Tensor:
    """[kv_heads, query blocks, key blocks] int32: each visible block kept with probability ``keep``."""
    first, num_query_blocks = prefill_blocks(start, length, block_size)
    num_key_blocks = -(-length // block_size)
    gen = torch.Generator().manual_seed(seed)
    own = first + torch.arange(num_query_blocks)[:, None]
    key = torch.arange(num_key_blocks)[None, :]
    chosen = (torch.rand(kv_heads, num_query_blocks, num_key_blocks, generator=gen) < keep) & (key < own)
    chosen |= key == own
    ascending = torch.where(chosen, key, num_key_blocks).sort(dim=-1).values
    return ascending.masked_fill(ascending == num_key_blocks, -1).to(torch.int32)
