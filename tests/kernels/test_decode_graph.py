"""The whole decode step (score, select, attend through ``decode_attention``) replays from a CUDA
graph: fixed shapes per batch bucket, no host sync, and new inputs copied into static buffers."""

import math

import pytest
import torch

from asr.attention.backend import DecodeMetadata, decode_attention
from asr.attention.config import UniqueConfig
from asr.attention.decode import paged_decode_reference
from asr.attention.kernels.scoring import score_select_triton
from tests.paged_batch import make_paged_batch
from tests.tolerances import assert_close

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize(
    "sparse", [None, UniqueConfig(page_size=16, budget_tokens=512)], ids=["dense", "unique"]
)
def test_decode_step_replays_from_cuda_graph(sparse):
    batch = make_paged_batch([9000, 700, 33, 4000], 32, 8, 128, 16, torch.bfloat16, seed=40, device="cuda")
    scale = 1 / math.sqrt(128)
    q = batch.q.clone()
    metadata = DecodeMetadata(batch.page_table.clone(), batch.seq_lens.clone())

    def step():
        return decode_attention(
            q, batch.k_cache, batch.v_cache, batch.key_stats, metadata, scale, sparse, layer=0
        )

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for seed in range(3):  # new query and shorter lengths, same buckets
        q.copy_(torch.randn(q.shape, generator=torch.Generator().manual_seed(seed)).to(q))
        metadata.seq_lens.copy_(
            batch.seq_lens - torch.tensor([seed * 100, seed, 0, seed * 7], dtype=torch.int32, device="cuda")
        )
        graph.replay()
        chosen = None
        if sparse is not None:
            # eager kernels choose the pages (the reference could break near-ties differently)
            _, chosen, _ = score_select_triton(
                q, batch.key_stats, metadata.page_table, metadata.seq_lens, sparse
            )
        expected, _ = paged_decode_reference(q.float(), batch.k_cache.float(), batch.v_cache.float(),
                                             metadata.page_table, metadata.seq_lens, scale, chosen)
        assert_close(out.float(), expected, torch.bfloat16)
