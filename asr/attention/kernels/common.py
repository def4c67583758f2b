"""Launcher checks shared by the kernel modules (no kernels here)."""

from __future__ import annotations

import os

import torch

KERNEL_DTYPES = (torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_device(*tensors: torch.Tensor) -> None:
    """All tensors on one CUDA device (or on the CPU under the interpreter)."""
    device = tensors[0].device
    for t in tensors:
        if t.device != device:
            raise ValueError(f"tensors on different devices: {t.device} and {device}")
    if device.type != "cuda" and not interpreting():
        raise ValueError(f"Triton kernels need CUDA tensors (or TRITON_INTERPRET=1), got {device}")


def check_dtype(name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        raise TypeError(f"{name} must be one of {allowed}, got {t.dtype}")


def check_contiguous(name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (strides {t.stride()} for shape {tuple(t.shape)})")


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must have unit stride in its last dim, got strides {t.stride()}")


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


_SM_COUNT: dict[int, int] = {}


def num_sms(device: torch.device) -> int:
    """Multiprocessors of a CUDA device (cached; 4 under the interpreter)."""
    if device.type != "cuda":
        return 4
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


_COUNTERS: dict[tuple[str, torch.device, int], torch.Tensor] = {}


def zeroed_counters(name: str, device: torch.device, count: int) -> torch.Tensor:
    """int32 counters that start at zero and that the kernels using them leave at zero (the last
    program of a row resets its counter), so they are made once and reused by every launch and
    graph replay. One set per kernel name: kernels that share a set must not run concurrently.
    A set first asked for during graph capture belongs to that graph and is not cached."""
    key = (name, device, count)
    counters = _COUNTERS.get(key)
    if counters is None:
        counters = torch.zeros(count, dtype=torch.int32, device=device)
        if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            _COUNTERS[key] = counters
    return counters
