"""Where converted weights live: the cache root and build-once staging of a cached directory.

Everything this project converts on first use (the embedded LLM dequantised from GGUF, the embedded
Whisper joined from its package parts and converted to Hugging Face format) is built into a temporary
sibling of its directory and renamed into place with a completion marker written last, so an
interrupted build never leaves a directory that looks complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

CACHE_ENV = "ASR_CACHE_DIR"
# Written last: a directory holding it is complete (an interrupted build leaves none).
DONE_MARKER = ".complete"


def cache_root() -> Path:
    """Root of this project's caches: ``$ASR_CACHE_DIR`` or ``~/.cache/asr``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "asr")


def is_built(out_dir: Path) -> bool:
    """True when ``out_dir`` was completed by ``build_once``."""
    return (out_dir / DONE_MARKER).is_file()


def build_once(out_dir: Path, build: Callable[[Path], None], rebuild: bool = False) -> Path:
    """``out_dir``, made by ``build(staging)`` into a temporary sibling renamed into place unless it is
    already complete (``rebuild`` builds it again anyway). A failed build leaves nothing behind."""
    if is_built(out_dir) and not rebuild:
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        build(staging)
        (staging / DONE_MARKER).write_text("")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
