"""A LoRA adapter of a plain LLM: adapter weights, which base model they adapt, how they were trained.

Stored as ``lora_adapter.safetensors`` (tensors named as ``asr.llm.lora.lora_state_dict`` names
them) beside ``lora_adapter.json`` (the LoRA config, the base model's path and fingerprint, and
free-form training info such as the soft-mask hyper-parameters). ``asr.llm.loader.load_model``
takes such a directory wherever it takes a model (``asr qa --model``, ``python -m eval.longqa
--model``) and merges the adapter into the base weights as it loads them.

The base is found by its recorded path (absolute, or relative to the adapter directory), else, when
the fingerprints agree, the embedded model: an adapter trained on a copy of the embedded model on
another machine loads here without the copy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from asr.errors import ModelLoadError
from asr.llm.lora import LoraConfig

ADAPTER_JSON = "lora_adapter.json"
ADAPTER_WEIGHTS = "lora_adapter.safetensors"


def model_fingerprint(model_dir: str | Path) -> str:
    """Identity of a Hugging Face model directory's weights, independent of how the files were
    written: the config's shape fields, every norm weight and the first rows of every other tensor."""
    model_dir = Path(model_dir)
    raw = json.loads((model_dir / "config.json").read_text())
    digest = hashlib.sha1()
    shape_keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
    digest.update(json.dumps({key: raw.get(key) for key in shape_keys}, sort_keys=True).encode())
    rows = {}
    for file in model_dir.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_slice(name)
                rows[name] = tensor[:] if name.endswith("norm.weight") else tensor[:2]
    for name in sorted(rows):
        digest.update(name.encode())
        digest.update(rows[name].float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class LoraAdapter:
    """lora_config: the adapters' rank, scale and targets; weights: ``{module}.lora_a`` [rank, in]
    and ``{module}.lora_b`` [out, rank] by Hugging Face module path; base: ``{"path", "fingerprint"}``
    of the model adapted; info: free-form provenance (steps, data, soft-mask hyper-parameters)."""

    lora_config: LoraConfig
    weights: dict[str, torch.Tensor]
    base: dict
    info: dict = field(default_factory=dict)

    @staticmethod
    def is_adapter_dir(path: str | Path) -> bool:
        return (Path(path).expanduser() / ADAPTER_JSON).is_file()

    def save(self, directory: str | Path, dtype: torch.dtype = torch.float16) -> None:
        """Write the adapter (float16 by default: rank 16 on SmolLM2-135M is 10 MB)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: tensor.to(dtype).contiguous().cpu() for name, tensor in self.weights.items()}
        save_file(tensors, str(directory / ADAPTER_WEIGHTS))
        meta = {"lora": asdict(self.lora_config), "base": self.base, "info": self.info}
        (directory / ADAPTER_JSON).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> LoraAdapter:
        directory = Path(directory).expanduser()
        if not (directory / ADAPTER_JSON).is_file() or not (directory / ADAPTER_WEIGHTS).is_file():
            raise ModelLoadError(f"{directory} holds no LoRA adapter ({ADAPTER_JSON} + {ADAPTER_WEIGHTS})")
        meta = json.loads((directory / ADAPTER_JSON).read_text())
        lora = dict(meta["lora"], targets=tuple(meta["lora"]["targets"]))
        stored = load_file(str(directory / ADAPTER_WEIGHTS))
        weights = {name: tensor.float() for name, tensor in stored.items()}
        return cls(LoraConfig(**lora), weights, meta["base"], meta.get("info", {}))

    def base_dir(self, directory: str | Path) -> Path:
        """The base model's Hugging Face directory for the adapter saved in ``directory``."""
        from asr.llm.embedded import embedded_llm_dir

        recorded = Path(self.base["path"]).expanduser()
        candidate = recorded if recorded.is_absolute() else Path(directory).expanduser() / recorded
        if (candidate / "config.json").is_file():
            if model_fingerprint(candidate) != self.base["fingerprint"]:
                raise ModelLoadError(
                    f"the base model at {candidate} is not the one the adapter in {directory} was trained "
                    f"on (fingerprint {self.base['fingerprint']}); put that model there"
                )
            return candidate
        embedded = embedded_llm_dir()
        if model_fingerprint(embedded) == self.base["fingerprint"]:
            return embedded
        raise ModelLoadError(
            f"the base model of the adapter in {directory} ({recorded}, fingerprint "
            f"{self.base['fingerprint']}) is not on this machine and is not the embedded model; copy it "
            f"to {candidate} or edit 'base.path' in {Path(directory) / ADAPTER_JSON}"
        )
