"""SiLU-gated product of the MLP, silu(gate) * up, in one pass; reference:
``asr.llm.layers.silu_mul_reference``."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from asr.attention.kernels.common import KERNEL_DTYPES, check_contiguous, check_device, check_dtype

BLOCK = 1024


@triton.jit
def _silu_mul_kernel(gate_up_ptr, out_ptr, width, BLOCK: tl.constexpr):
    token = tl.program_id(0)
    o = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = o < width
    gate = tl.load(gate_up_ptr + token * 2 * width + o, mask=m, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + token * 2 * width + width + o, mask=m, other=0.0).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    tl.store(out_ptr + token * width + o, (silu * up).to(dtype), mask=m)


def silu_mul_triton(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up: [tokens, 2 * width] (gate, then up) -> silu(gate) * up: [tokens, width]."""
    check_device(gate_up)
    check_dtype("gate_up", gate_up, KERNEL_DTYPES + (torch.float32,))
    check_contiguous("gate_up", gate_up)
    tokens, width = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((tokens, width), dtype=gate_up.dtype, device=gate_up.device)
    _silu_mul_kernel[(tokens, triton.cdiv(width, BLOCK))](gate_up, out, width, BLOCK=BLOCK, num_warps=4)
    return out
