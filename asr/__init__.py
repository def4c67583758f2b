"""Long-form speech transcription on a speech LLM with UNIQUE top-k sparse attention decoding."""

__version__ = "0.1.0"
