"""Long-form speech transcription on a speech LLM with UNIQUE top-k sparse attention decoding."""

from asr.transformers_hook import install as _install_transformers_hook

__version__ = "0.1.0"

_install_transformers_hook()  # attn_implementation="unique_softmask" once transformers' models load
