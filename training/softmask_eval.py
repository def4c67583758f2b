"""Evaluation during soft-mask fine-tuning: held-out LM loss and a needle probe, each with dense
attention and with the hard top-k page mask that UNIQUE decoding applies.

The hard mask is the soft mask at ``HARD_TEMPERATURE``: pages above the k-th score weigh 1, below it
0 (the k-th 1/2), per query, as every decode step of ``--attention unique`` would choose them.
"""

from __future__ import annotations

import contextlib

import torch

from asr.attention.config import SoftMaskConfig, UniqueConfig
from asr.attention.hf_softmask import set_soft_mask

HARD_TEMPERATURE = 1e-4  # in page-score units; real score gaps are far larger, so weights are 0 or 1


def settings(sparse: UniqueConfig, query_block: int) -> dict[str, SoftMaskConfig]:
    return {"dense": SoftMaskConfig(None, query_block=query_block),
            "hard": SoftMaskConfig(sparse, HARD_TEMPERATURE, query_block)}


def autocast(device: torch.device):
    return (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
            else contextlib.nullcontext())


@torch.no_grad()
def lm_loss(model, batches: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    """Mean next-token loss over every supervised token of ``batches``."""
    total, count = 0.0, 0
    for batch in batches:
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        with autocast(device):
            total += float(model(**batch).loss) * tokens
        count += tokens
    return total / max(count, 1)


@torch.no_grad()
def probe_scores(model, probes: list[tuple], device: torch.device) -> tuple[float, float]:
    """(share of probes whose every value token is the argmax, share of value tokens that are)."""
    exact, correct, tokens = 0, 0, 0
    for sequence, positions, targets in probes:
        with autocast(device):
            logits = model(input_ids=torch.as_tensor(sequence, device=device)[None]).logits[0]
        hits = logits[torch.as_tensor(positions, device=device)].argmax(-1).cpu() == torch.as_tensor(targets)
        exact += bool(hits.all())
        correct += int(hits.sum())
        tokens += len(targets)
    return exact / max(len(probes), 1), correct / max(tokens, 1)


def evaluate(model, heldout: list, probes: list, sparse: UniqueConfig, query_block: int,
             device: torch.device) -> dict[str, float]:
    """Loss and probe scores per setting (``loss_dense``, ``loss_hard``, ``probe_exact_dense``, ...).
    Leaves the model in the hard setting: the caller sets its training mask before the next step."""
    was_training = model.training
    model.eval()
    result = {}
    for name, config in settings(sparse, query_block).items():
        set_soft_mask(model, config)
        result[f"loss_{name}"] = lm_loss(model, heldout, device)
        if probes:
            exact, tokens = probe_scores(model, probes, device)
            result[f"probe_exact_{name}"], result[f"probe_tokens_{name}"] = exact, tokens
    model.train(was_training)
    return result
