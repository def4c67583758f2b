"""Residual add + RMSNorm in one pass; reference: ``asr.llm.layers.add_rms_norm_reference``.

One program per token row: it adds the residual (rounded to the input dtype, as the unfused add
stores it), writes that sum as the new residual, and normalises it in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from asr.attention.kernels.common import (
    KERNEL_DTYPES,
    check_contiguous,
    check_device,
    check_dtype,
    next_power_of_2,
)


@triton.jit
def _add_rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, sum_ptr, size, eps,
                         HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    o = tl.arange(0, BLOCK)
    m = o < size
    x = tl.load(x_ptr + row * size + o, mask=m, other=0.0)
    if HAS_RESIDUAL:
        x = (x.to(tl.float32) + tl.load(residual_ptr + row * size + o, mask=m, other=0.0).to(tl.float32))
        x = x.to(sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * size + o, x, mask=m)
    x = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, 0) / size + eps)
    w = tl.load(weight_ptr + o, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * size + o, (x * rstd * w).to(out_ptr.dtype.element_ty), mask=m)


def add_rms_norm_triton(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                        eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual: [tokens, size] (residual may be None); weight: [size].

    Returns (rms_norm(x + residual) * weight, x + residual), both [tokens, size] in x's dtype (the
    second is x itself without a residual)."""
    check_device(x, weight, *([residual] if residual is not None else []))
    check_dtype("x", x, KERNEL_DTYPES + (torch.float32,))
    check_contiguous("x", x)
    if residual is not None:
        check_contiguous("residual", residual)
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(f"residual {tuple(residual.shape)} {residual.dtype} must match "
                             f"x {tuple(x.shape)} {x.dtype}")
    tokens, size = x.shape
    out = torch.empty_like(x)
    total = torch.empty_like(x) if residual is not None else x
    block = next_power_of_2(size)
    _add_rms_norm_kernel[(tokens,)](x, residual if residual is not None else x, weight, out, total, size, eps,
                                    HAS_RESIDUAL=residual is not None, BLOCK=block,
                                    num_warps=max(1, min(8, block // 256)))
    return out, total
