"""Real attention inputs: the post-RoPE queries, keys and values of every layer of a Hugging Face
causal LM reading a text (through transformers' attention registry, no patched forward)."""

from __future__ import annotations

import torch


def capture_attention(model_dir: str, text: str, max_tokens: int, dtype: torch.dtype = torch.float32):
    """Run the model over the first ``max_tokens`` tokens of ``text``.

    Returns (per layer (q [seq, q_heads, d], k [seq, kv_heads, d], v [seq, kv_heads, d]) in ``dtype``,
    tokens read).
    """
    from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    captured: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def capture(module, query, key, value, attention_mask, **kwargs):
        captured.append(tuple(t[0].transpose(0, 1).detach().to(dtype) for t in (query, key, value)))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("capture", capture)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="capture")
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :max_tokens]
    with torch.no_grad():
        model(ids)
    return captured, ids.shape[1]
