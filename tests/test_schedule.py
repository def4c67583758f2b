"""Learning-rate schedule: warm-up by steps, or by the time limit when that comes first; cosine decay."""

import math

import pytest
import torch

from training.schedule import WARMUP_SHARE, Schedule


def optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_step_warmup_then_cosine():
    schedule = Schedule(optimizer(), steps=100, time_limit_min=0, lora_start=0)
    assert schedule.set_lr(0, 0.0) == pytest.approx(0.1 * 0.5 * (1 + math.cos(0.0)))
    assert schedule.set_lr(50, 0.0) == pytest.approx(0.5)
    assert schedule.set_lr(100, 0.0) == pytest.approx(0.0, abs=1e-12)


def test_time_limited_run_warms_up_within_its_share_of_the_time():
    # an upper bound of steps far beyond what the time allows must not stretch the warm-up
    schedule = Schedule(optimizer(), steps=100_000, time_limit_min=1.0, lora_start=0)
    early = schedule.set_lr(3, 0.5 * WARMUP_SHARE * 60)
    assert early == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.5 * WARMUP_SHARE)))
    warm = schedule.set_lr(5, WARMUP_SHARE * 60)
    assert warm == pytest.approx(0.5 * (1 + math.cos(math.pi * WARMUP_SHARE)))
