"""Load a Llama-family model from a local Hugging Face directory or a GGUF file. Never touches a hub.

The one place where Hugging Face weight names meet ours: ``model.`` is dropped, q/k/v projections
are fused into ``qkv_proj`` and gate/up into ``gate_up_proj``. A GGUF file is dequantised once with
transformers' GGUF reader into a cached Hugging Face directory (see ``asr.llm.embedded``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from asr.errors import ModelLoadError
from asr.llm.config import ModelConfig
from asr.llm.embedded import gguf_to_hf_dir
from asr.llm.lora import merge_lora
from asr.llm.lora_adapter import LoraAdapter
from asr.llm.model import CausalLM
from asr.weights_cache import build_once, cache_root, is_built

log = logging.getLogger(__name__)

SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# (our name, Hugging Face parts concatenated along the output dimension), per decoder layer.
FUSED = {
    "self_attn.qkv_proj.weight": (
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
    ),
    "self_attn.qkv_proj.bias": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    "mlp.gate_up_proj.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
}
# load_model's converted weights: our names, in the model's dtype; a new format needs a new number
CONVERTED_FILE = "model.safetensors"
CONVERTED_FORMAT = 1


def resolve_model_dir(path: str | Path) -> Path:
    """A Hugging Face directory for ``path``: the directory itself, or the cached conversion of a
    .gguf file."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_file() and path.suffix == ".gguf":
        stat = path.stat()
        key = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        out_dir = cache_root() / "models" / f"{path.stem}-{key}"
        if (out_dir / "config.json").is_file() and (out_dir / "model.safetensors").is_file():
            return out_dir
        return gguf_to_hf_dir(path, out_dir)
    raise ModelLoadError(
        f"{path} is neither a model directory with config.json nor a .gguf file; pass a local "
        "Hugging Face directory (config.json + *.safetensors) or a GGUF file"
    )


def read_model_config(model_dir: Path) -> tuple[ModelConfig, dict]:
    """ModelConfig and the raw config.json of a Hugging Face directory."""
    raw = json.loads((model_dir / "config.json").read_text())
    model_type = raw.get("model_type", "")
    if model_type not in SUPPORTED_TYPES:
        raise ModelLoadError(
            f"model type {model_type!r} in {model_dir} is not supported; use one of "
            f"{', '.join(SUPPORTED_TYPES)}"
        )
    eos = raw.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
    heads = raw["num_attention_heads"]
    config = ModelConfig(
        model_type=model_type,
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        num_layers=raw["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        max_context=raw.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or bool(raw.get("attention_bias", False)),
        qk_norm=model_type == "qwen3",
        eos_token_ids=eos_ids,
    )
    return config, raw


def rope_frequencies(model_dir: Path, raw: dict, head_dim: int) -> tuple[torch.Tensor, float]:
    """inv_freq [head_dim // 2] float32 and the cos/sin scaling, following the model's rope type."""
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
        return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)), 1.0
    if rope_type == "dynamic":
        raise ModelLoadError("dynamic NTK rope scaling changes with the context length and is not supported")
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ModelLoadError(f"rope type {rope_type!r} of {model_dir} is not supported")
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](AutoConfig.from_pretrained(model_dir), "cpu")
    return inv_freq.float(), float(scaling)


def load_tokenizer(model_dir: Path):
    """The tokenizer of a Hugging Face directory. With a ``tokenizer.json`` it is built straight from
    it: ``AutoTokenizer`` would first read the model's config class, whose import pulls in
    ``torch.distributed`` and sympy (~900 modules, 2-3 s of a 2-core CPU start-up) for the same
    tokenizer."""
    if (model_dir / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(model_dir), local_files_only=True)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def read_weights(file: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file, by name (on CPU)."""
    with safe_open(str(file), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def read_hf_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's safetensors files, by Hugging Face name (on CPU)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no *.safetensors weights in {model_dir}")
    return {name: tensor for file in files for name, tensor in read_weights(file).items()}


def map_hf_weights(hf: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename and fuse Hugging Face tensors into this package's parameter names."""
    hf = {name.removeprefix("model."): tensor for name, tensor in hf.items()}
    ours: dict[str, torch.Tensor] = {}
    for layer in range(config.num_layers):
        prefix = f"layers.{layer}."
        for fused, parts in FUSED.items():
            names = [prefix + part for part in parts]
            if all(name in hf for name in names):
                ours[prefix + fused] = torch.cat([hf.pop(name) for name in names], dim=0)
    for name, tensor in hf.items():
        if "rotary_emb" in name:
            continue
        ours[name] = tensor
    if config.tie_word_embeddings:
        ours.pop("lm_head.weight", None)
    return ours


def merging_adapter(
    adapter: LoraAdapter, then: Callable[[dict[str, torch.Tensor]], None] | None
) -> Callable[[dict[str, torch.Tensor]], None]:
    """A weight edit that merges ``adapter`` into Hugging Face-named tensors, then runs ``then``."""

    def adapt(weights: dict[str, torch.Tensor]) -> None:
        merge_lora(weights, adapter.weights, adapter.lora_config)
        if then is not None:
            then(weights)

    return adapt


def load_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    adapt_weights: Callable[[dict[str, torch.Tensor]], None] | None = None,
    converted_dir: Path | None = None,
) -> tuple[CausalLM, Path]:
    """Build the model of a Hugging Face directory, GGUF file or LoRA adapter directory
    (``asr.llm.lora_adapter``: its base model with the adapter merged); returns it (eval mode) and
    its (base) Hugging Face directory.

    adapt_weights: edits the Hugging Face-named tensors in place before they are mapped (e.g. folds
    a speech adapter's LoRA into them); runs after a LoRA adapter directory's own merge.
    converted_dir: a cache of the weights as loaded (adapted, renamed, fused, in ``dtype``): read from
    there when it is complete, else written there once (``asr.weights_cache.build_once``). Its name
    must change with anything that changes them (the caller's key, ``CONVERTED_FORMAT``): it is
    never checked against the sources. Merging a speech adapter's LoRA into SmolLM2-135M took ~5 s
    of a 2-core CPU on every start; the cached weights load in a fraction of a second.
    """
    if LoraAdapter.is_adapter_dir(path):
        adapter_dir, adapter = path, LoraAdapter.load(path)
        path = adapter.base_dir(adapter_dir)
        adapt_weights = merging_adapter(adapter, then=adapt_weights)
        log.info("merging the LoRA adapter %s into %s", adapter_dir, path)
    model_dir = resolve_model_dir(path)
    config, raw = read_model_config(model_dir)
    inv_freq, scaling = rope_frequencies(model_dir, raw, config.head_dim)
    with torch.device("meta"):
        model = CausalLM(config, inv_freq, scaling)
    if converted_dir is not None and is_built(converted_dir):
        weights = read_weights(converted_dir / CONVERTED_FILE)
    else:
        hf_weights = read_hf_weights(model_dir)
        if adapt_weights is not None:
            adapt_weights(hf_weights)
        weights = {name: tensor.to(dtype) for name, tensor in map_hf_weights(hf_weights, config).items()}
        if converted_dir is not None:
            build_once(converted_dir, lambda staging: save_file(weights, str(staging / CONVERTED_FILE)))
    expected = {name for name, _ in model.named_parameters()}
    missing, unexpected = expected - weights.keys(), weights.keys() - expected
    if missing or unexpected:
        raise ModelLoadError(
            f"weights of {model_dir} do not match a {config.model_type} model: missing "
            f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.rotary.inv_freq = inv_freq.float()
    log.info("loaded %s (%s, %d layers) from %s", config.model_type, dtype, config.num_layers, model_dir)
    return model.to(device).eval(), model_dir


def random_model(
    config: ModelConfig,
    device: torch.device | str,
    dtype: torch.dtype,
    rope_theta: float = 500000.0,
    seed: int = 0,
) -> CausalLM:
    """A model with random weights (speed benchmarks): std 0.02 linears, unit norms."""
    inv_freq = 1.0 / (
        rope_theta ** (torch.arange(0, config.head_dim, 2, dtype=torch.float) / config.head_dim)
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = CausalLM(config, inv_freq).to(dtype)
    model.rotary.inv_freq = inv_freq.to(device)  # rope frequencies stay float32 on the model's device
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.02)
            elif "norm" not in name:
                param.zero_()
    return model.eval()
