"""The decoder's per-token operations (normalisation, rotary embedding, gated activation): PyTorch
references, and the functions the model calls, which run the fused Triton kernels of
``asr.llm.kernels`` on CUDA (a decode step is ~16 small launches per layer: fusing saves a third)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def add_rms_norm_reference(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual: [..., size] (residual may be None); weight: [size].

    Returns (rms_norm(x + residual) * weight, x + residual) in x's dtype, normalised in float32."""
    total = x if residual is None else x + residual
    return F.rms_norm(total, (total.shape[-1],), weight, eps), total


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x: [tokens, heads, head_dim]; cos, signed_sin: [tokens, 1, head_dim] (``RotaryEmbedding``), or
    any shapes that broadcast: ``x*cos + roll(x)*signed_sin``, HF's rotate-half rotation."""
    rolled = torch.roll(x, x.shape[-1] // 2, dims=-1)  # (x2, x1)
    return torch.addcmul(x * cos, rolled, signed_sin)


def silu_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up: [tokens, 2 * width] (gate, then up) -> silu(gate) * up: [tokens, width]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def _fused(x: torch.Tensor) -> bool:
    """Run the Triton kernel: CUDA inference (the kernels have no backward; training uses references)."""
    return x.is_cuda and not torch.is_grad_enabled()


def add_rms_norm(x, residual, weight, eps):
    """``add_rms_norm_reference``; one fused kernel for contiguous [tokens, size] CUDA tensors."""
    if _fused(x) and x.dim() == 2 and x.is_contiguous() and (residual is None or residual.is_contiguous()):
        from asr.llm.kernels.norm import add_rms_norm_triton

        return add_rms_norm_triton(x, residual, weight, eps)
    return add_rms_norm_reference(x, residual, weight, eps)


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """``apply_rotary``; one kernel on CUDA (instead of three)."""
    if _fused(x) and x.stride(-1) == 1:
        from asr.llm.kernels.rotary import apply_rotary_triton

        return apply_rotary_triton(x, cos, signed_sin)
    return apply_rotary(x, cos, signed_sin)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu_mul_reference``; one kernel on CUDA (instead of two)."""
    if _fused(gate_up) and gate_up.is_contiguous():
        from asr.llm.kernels.activation import silu_mul_triton

        return silu_mul_triton(gate_up)
    return silu_mul_reference(gate_up)
