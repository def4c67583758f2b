"""The trained speech adapter: projector weights, LoRA deltas and the configs that shaped them.

Stored as ``adapter.safetensors`` (tensors ``projector.*`` and ``lora.*``) beside
``adapter.json`` (configs, base-model identity and how it was trained).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from asr.errors import AsrError
from asr.llm.lora import LoraConfig
from asr.speech.projector import ProjectorConfig


@dataclass
class SpeechAdapter:
    """projector: state dict of ``FrameStackProjector``; lora: adapters as ``lora_state_dict``
    names them; info: free-form provenance (data, steps, device time, base models)."""

    projector_config: ProjectorConfig
    lora_config: LoraConfig
    projector: dict[str, torch.Tensor]
    lora: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)

    def save(self, directory: str | Path, dtype: torch.dtype = torch.float16) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"projector.{k}": v.to(dtype).contiguous().cpu() for k, v in self.projector.items()}
        tensors.update({f"lora.{k}": v.to(dtype).contiguous().cpu() for k, v in self.lora.items()})
        save_file(tensors, str(directory / "adapter.safetensors"))
        meta = {
            "projector": asdict(self.projector_config),
            "lora": asdict(self.lora_config),
            "info": self.info,
        }
        (directory / "adapter.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> SpeechAdapter:
        directory = Path(directory)
        if not (directory / "adapter.json").exists() or not (directory / "adapter.safetensors").exists():
            raise AsrError(f"{directory} holds no speech adapter (adapter.json + adapter.safetensors)")
        meta = json.loads((directory / "adapter.json").read_text())
        tensors = load_file(str(directory / "adapter.safetensors"))
        lora_meta = dict(meta["lora"], targets=tuple(meta["lora"]["targets"]))
        return cls(
            ProjectorConfig(**meta["projector"]),
            LoraConfig(**lora_meta),
            {k[len("projector."):]: v.float() for k, v in tensors.items() if k.startswith("projector.")},
            {k[len("lora."):]: v.float() for k, v in tensors.items() if k.startswith("lora.")},
            meta.get("info", {}),
        )
