"""The decoder's fused kernels (asr.llm.kernels) against their references in asr.llm.layers:
residual add + RMSNorm, rotary embedding of strided q/k heads, SiLU-gated product; ragged sizes
that do not fill a block, float32 references for the half-precision runs."""

import pytest
import torch

from asr.llm.kernels.activation import silu_mul_triton
from asr.llm.kernels.norm import add_rms_norm_triton
from asr.llm.kernels.rotary import apply_rotary_triton
from asr.llm.layers import add_rms_norm_reference, apply_rotary, silu_mul_reference
from asr.llm.model import RotaryEmbedding
from tests.tolerances import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.float32, id="fp32")]


def randn(*shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,size", [(1, 576), (3, 2048), (5, 130)])
@pytest.mark.parametrize("with_residual", [True, False], ids=["residual", "first-layer"])
def test_add_rms_norm_matches_reference(dtype, tokens, size, with_residual):
    x = randn(tokens, size, dtype=dtype, seed=size) * 3
    residual = randn(tokens, size, dtype=dtype, seed=size + 1) if with_residual else None
    weight = randn(size, dtype=dtype, seed=size + 2)
    normed, total = add_rms_norm_triton(x, residual, weight, 1e-5)
    ref_total = x.float() + (residual.float() if with_residual else 0)
    ref_normed, _ = add_rms_norm_reference(ref_total, None, weight.float(), 1e-5)
    assert_close(total, ref_total, dtype)
    assert_close(normed, ref_normed, dtype)
    if not with_residual:
        assert total is x
    elif DEVICE == "cuda":  # the sum is stored as the unfused add stores it (the interpreter's
        assert torch.equal(total, x + residual)  # float32 -> bf16 cast rounds differently)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,heads,head_dim", [(1, 40, 64), (4, 12, 128), (2, 3, 32)])
def test_rotary_matches_reference_on_strided_heads(dtype, tokens, heads, head_dim):
    """q/k heads are a view of the fused qkv output: token stride wider than the heads it holds."""
    qkv = randn(tokens, (heads + 6) * head_dim, dtype=dtype, seed=heads)
    x = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    positions = torch.tensor([7, 1000, 65000, 3][:tokens], device=DEVICE)
    cos, sin = RotaryEmbedding(inv_freq, 1.0).to(DEVICE)(positions, dtype)
    out = apply_rotary_triton(x, cos, sin)
    assert out.is_contiguous()
    assert_close(out, apply_rotary(x.float(), cos.float(), sin.float()), dtype)
    if dtype == torch.float32:
        assert_close(out, apply_rotary(x, cos, sin))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,width", [(1, 8192), (3, 1500)])
def test_silu_mul_matches_reference(dtype, tokens, width):
    gate_up = randn(tokens, 2 * width, dtype=dtype, seed=width) * 4
    assert_close(silu_mul_triton(gate_up), silu_mul_reference(gate_up.float()), dtype)


def test_launchers_reject_bad_inputs():
    x = randn(2, 64, dtype=torch.float32, seed=0)
    with pytest.raises(ValueError, match="residual"):
        add_rms_norm_triton(x, randn(2, 32, dtype=torch.float32, seed=1), torch.ones(64, device=DEVICE), 1e-5)
    with pytest.raises(ValueError, match="contiguous"):
        silu_mul_triton(randn(4, 64, dtype=torch.float32, seed=2).t())
    cos = torch.ones(2, 1, 64, device=DEVICE, dtype=torch.float16)
    with pytest.raises(ValueError, match="dtype"):
        apply_rotary_triton(x.view(2, 1, 64), cos, cos)
