"""Triton kernels of the decoder's per-token work (CUDA decode path); references in ``asr.llm.layers``."""
