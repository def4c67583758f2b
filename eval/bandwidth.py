"""Memory copy bandwidth, the denominator of every bytes-moved floor the benchmarks print."""

from __future__ import annotations

import time

import torch

CUDA_BUFFER_BYTES = 2**30  # large enough that launch overhead and caches do not count
CPU_BUFFER_BYTES = 256 * 2**20


def copy_bandwidth(device: torch.device | str = "cpu") -> float:
    """Bytes per second of a large tensor copy on ``device``, read and write both counted.

    CUDA: device-to-device copies of 1 GiB timed with events, median of 20 after 5 warm-ups. CPU: five
    back-to-back copies of 256 MiB after one warm-up, timed together."""
    device = torch.device(device)
    if device.type == "cuda":
        src = torch.empty(CUDA_BUFFER_BYTES // 2, dtype=torch.bfloat16, device=device).normal_()
        dst = torch.empty_like(src)
        times = []
        for _ in range(25):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        del src, dst
        timed = sorted(times[5:])
        return 2 * CUDA_BUFFER_BYTES / timed[len(timed) // 2]
    src = torch.empty(CPU_BUFFER_BYTES, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)
    start = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    return 2 * 5 * CPU_BUFFER_BYTES / (time.perf_counter() - start)
