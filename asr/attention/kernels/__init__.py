"""Triton kernels of the attention ops, one op per module; each launcher matches its reference in
``asr.attention`` (append, scoring, selection, decode). Import these modules lazily: CPU-only use
never needs a working Triton."""
