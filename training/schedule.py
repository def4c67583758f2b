"""Learning-rate schedule of the training recipes: linear warm-up, then cosine decay over the steps or
the time limit, whichever ends first."""

from __future__ import annotations

import math

import torch

LORA_GROUP = 1  # in the speech recipe's optimizer: parameter groups projector, then LoRA
WARMUP_SHARE = 0.1  # warm-up ends after this share of the run at the latest (time-limited runs)


class Schedule:
    """Learning rates per step: linear warm-up (over min(200, steps / 10) steps, or the first
    ``WARMUP_SHARE`` of the time limit if that comes first), then cosine decay over the steps or the
    time limit, whichever ends first; LoRA's group stays at 0 for the first ``lora_start`` steps."""

    def __init__(self, optimizer: torch.optim.Optimizer, steps: int, time_limit_min: float, lora_start: int):
        self.optimizer, self.steps, self.time_limit_min, self.lora_start = (
            optimizer,
            steps,
            time_limit_min,
            lora_start,
        )
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.warmup = max(1, min(200, steps // 10))

    def progress(self, step: int, elapsed_s: float) -> float:
        """Share of the run done, 0..1: of the steps or of the time limit, whichever is further."""
        progress = step / self.steps
        if self.time_limit_min:
            progress = max(progress, elapsed_s / (self.time_limit_min * 60))
        return min(progress, 1.0)

    def set_lr(self, step: int, elapsed_s: float) -> float:
        """Set every group's rate for ``step`` (counted from this run's start); returns the first group's."""
        progress = self.progress(step, elapsed_s)
        warm = min(1.0, max((step + 1) / self.warmup, progress / WARMUP_SHARE))
        factor = warm * 0.5 * (1 + math.cos(math.pi * progress))
        for index, (group, base) in enumerate(zip(self.optimizer.param_groups, self.base_lrs)):
            frozen = index == LORA_GROUP and step < self.lora_start
            group["lr"] = 0.0 if frozen else base * factor
        return self.base_lrs[0] * factor
