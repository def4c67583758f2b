"""Rotary position embedding of the query and key heads in one pass; reference:
``asr.llm.layers.apply_rotary``.

Rounding follows the reference's two bf16/fp16 steps (x*cos, then + roll(x)*signed_sin), so both
agree to the last bit up to float32 fused multiply-add.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from asr.attention.kernels.common import KERNEL_DTYPES, check_device, check_dtype, check_last_dim_contiguous


@triton.jit
def _rotary_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, heads, stride_xt, stride_xh,
                   HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    token = tl.program_id(0)
    o_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    o_d = tl.arange(0, HALF)
    m = (o_h < heads)[:, None]
    p_x = x_ptr + token * stride_xt + o_h[:, None] * stride_xh + o_d[None, :]
    x1 = tl.load(p_x, mask=m, other=0.0)
    x2 = tl.load(p_x + HALF, mask=m, other=0.0)
    cos1 = tl.load(cos_ptr + token * 2 * HALF + o_d)[None, :]
    cos2 = tl.load(cos_ptr + token * 2 * HALF + HALF + o_d)[None, :]
    sin1 = tl.load(sin_ptr + token * 2 * HALF + o_d)[None, :].to(tl.float32)
    sin2 = tl.load(sin_ptr + token * 2 * HALF + HALF + o_d)[None, :].to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    x1, x2 = x1.to(tl.float32), x2.to(tl.float32)
    out1 = (x1 * cos1.to(tl.float32)).to(dtype).to(tl.float32) + x2 * sin1
    out2 = (x2 * cos2.to(tl.float32)).to(dtype).to(tl.float32) + x1 * sin2
    p_out = out_ptr + token * heads * 2 * HALF + o_h[:, None] * 2 * HALF + o_d[None, :]
    tl.store(p_out, out1.to(dtype), mask=m)
    tl.store(p_out + HALF, out2.to(dtype), mask=m)


def apply_rotary_triton(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x: [tokens, heads, head_dim] (any token/head strides, unit last stride); cos, signed_sin:
    [tokens, 1, head_dim] contiguous, x's dtype. Returns the rotated heads, contiguous."""
    check_device(x, cos, signed_sin)
    check_dtype("x", x, KERNEL_DTYPES + (torch.float32,))
    check_last_dim_contiguous("x", x)
    tokens, heads, head_dim = x.shape
    if (
        cos.dtype != x.dtype
        or signed_sin.dtype != x.dtype
        or not (cos.is_contiguous() and signed_sin.is_contiguous())
    ):
        raise ValueError("cos and signed_sin must be contiguous and in x's dtype")
    out = torch.empty((tokens, heads, head_dim), dtype=x.dtype, device=x.device)
    block_h = 16
    _rotary_kernel[(tokens, triton.cdiv(heads, block_h))](
        x,
        cos,
        signed_sin,
        out,
        heads,
        x.stride(0),
        x.stride(1),
        HALF=head_dim // 2,
        BLOCK_H=block_h,
        num_warps=4,
    )
    return out
