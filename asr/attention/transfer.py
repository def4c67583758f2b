"""Host values to the device without waiting for it."""

from __future__ import annotations

import torch


def to_device(values, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A list (nested lists) or CPU tensor as a ``dtype`` tensor on ``device``.

    On CUDA the values are staged in pinned memory and copied asynchronously: a copy from pageable
    memory waits for every kernel already queued, which would stall a decode step queued ahead."""
    host = values.to(dtype) if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    if torch.device(device).type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
