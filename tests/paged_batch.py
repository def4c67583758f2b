"""Random paged KV batches for attention tests: uneven lengths, scattered pages, poisoned slack."""

from dataclasses import dataclass

import torch

from asr.attention.page_stats import page_key_stats


@dataclass
class PagedBatch:
    """q: [batch, q_heads, d]; k_cache/v_cache: [num_pages, kv_heads, page_size, d];
    key_stats: [num_pages, kv_heads, 4, d]; page_table: [batch, max_pages] int32;
    seq_lens: [batch] int32; keys/values: per sequence [len, kv_heads, d] float32 originals."""

    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    key_stats: torch.Tensor
    page_table: torch.Tensor
    seq_lens: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


def make_paged_batch(seq_lens, q_heads, kv_heads, head_dim, page_size, dtype, seed=0, device="cpu",
                     key_scale=1.0) -> PagedBatch:
    gen = torch.Generator().manual_seed(seed)
    pages_per_seq = [-(-n // page_size) for n in seq_lens]
    num_pages = sum(pages_per_seq) + 3
    perm = torch.randperm(num_pages, generator=gen)  # scattered physical pages
    k_cache = torch.full((num_pages, kv_heads, page_size, head_dim), float("nan"))  # slack is poison
    v_cache = torch.full_like(k_cache, float("nan"))
    table = torch.zeros(len(seq_lens), max(pages_per_seq), dtype=torch.int32)
    keys, values, cursor = [], [], 0
    for row, (n, p) in enumerate(zip(seq_lens, pages_per_seq)):
        k = torch.randn(n, kv_heads, head_dim, generator=gen) * key_scale
        v = torch.randn(n, kv_heads, head_dim, generator=gen)
        keys.append(k.to(dtype).float())
        values.append(v.to(dtype).float())
        ids = perm[cursor : cursor + p]
        cursor += p
        table[row, :p] = ids.to(torch.int32)
        pad = p * page_size - n
        kp = torch.cat([k, torch.full((pad, kv_heads, head_dim), float("nan"))]).view(
            p, page_size, kv_heads, head_dim
        )
        vp = torch.cat([v, torch.full((pad, kv_heads, head_dim), float("nan"))]).view(
            p, page_size, kv_heads, head_dim
        )
        k_cache[ids] = kp.transpose(1, 2)
        v_cache[ids] = vp.transpose(1, 2)
    fill = torch.full((num_pages,), page_size)
    for row, n in enumerate(seq_lens):
        fill[table[row, pages_per_seq[row] - 1]] = n - (pages_per_seq[row] - 1) * page_size
    key_stats = page_key_stats(torch.nan_to_num(k_cache.to(dtype).float(), nan=0.0), fill)
    q = torch.randn(len(seq_lens), q_heads, head_dim, generator=gen)
    to = dict(device=device)
    return PagedBatch(q.to(dtype).to(**to), k_cache.to(dtype).to(**to), v_cache.to(dtype).to(**to),
                      key_stats.to(dtype).to(**to), table.to(**to),
                      torch.tensor(seq_lens, dtype=torch.int32, device=device), keys, values)
