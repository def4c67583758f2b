"""Low-rank adapters on an LLM's linear layers: trained (speech adapter, soft-mask tuning), merged at load."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LoraConfig:
    """rank: adapter rank; alpha: scale numerator (delta = alpha/rank * B @ A); targets: names of
    the linear layers that get adapters (matched on the last component of the module path)."""

    rank: int = 16
    alpha: float = 32.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoraLinear(nn.Module):
    """``base(x) + scale * (x @ A^T) @ B^T``; A: [rank, in], B: [out, rank] (B starts at zero)."""

    def __init__(self, base: nn.Linear, config: LoraConfig) -> None:
        super().__init__()
        self.base = base
        self.scale = config.scale
        device = base.weight.device  # float32 adapters beside base weights of any dtype
        self.lora_a = nn.Parameter(
            torch.randn(config.rank, base.in_features, device=device) / base.in_features**0.5
        )
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, config.rank, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = (x.to(self.lora_a.dtype) @ self.lora_a.T) @ self.lora_b.T
        return self.base(x) + (self.scale * delta).to(x.dtype)


def add_lora(model: nn.Module, config: LoraConfig) -> list[str]:
    """Replace every target linear layer of ``model`` in place; returns the wrapped module paths."""
    wrapped = []
    for path, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and name in config.targets:
                setattr(module, name, LoraLinear(child, config))
                wrapped.append(f"{path}.{name}" if path else name)
    return wrapped


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters alone: ``{module_path}.lora_a`` / ``.lora_b`` tensors."""
    return {name: p.detach() for name, p in model.named_parameters() if name.endswith((".lora_a", ".lora_b"))}


def merge_lora(
    weights: dict[str, torch.Tensor], adapters: dict[str, torch.Tensor], config: LoraConfig
) -> None:
    """Fold adapters into plain weights in place: ``W += scale * B @ A``.

    weights: Hugging Face names (``model.layers.0.self_attn.q_proj.weight``); adapters: names as
    ``lora_state_dict`` gives them (``model.layers.0.self_attn.q_proj.lora_a``).
    """
    for name, lora_a in adapters.items():
        if not name.endswith(".lora_a"):
            continue
        module = name[: -len(".lora_a")]
        lora_b = adapters[f"{module}.lora_b"]
        target = weights[f"{module}.weight"]
        delta = config.scale * (lora_b.float() @ lora_a.float())
        weights[f"{module}.weight"] = (target.float() + delta).to(target.dtype)
