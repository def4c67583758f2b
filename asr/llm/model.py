"""Llama-family decoder (Llama, Mistral, Qwen2/2.5/3, SmolLM2) over a flat batch of tokens.

Tokens of all sequences of a step are concatenated: ``hidden: [tokens, hidden_size]``,
``positions: [tokens]``. Attention reads how to use the paged cache from the step context
(``asr.llm.attention.StepContext``). Parameter names follow Hugging Face's without the ``model.``
prefix, except the fused ``qkv_proj`` and ``gate_up_proj`` (the loader fuses them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from asr.llm.attention import StepContext, paged_attention
from asr.llm.config import ModelConfig
from asr.llm.layers import add_rms_norm, rotate, silu_mul


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, computed in float32 like transformers.

    ``forward(x)`` normalises any [..., size]; ``add(x, residual)`` is the decoder's residual add +
    norm (one kernel on CUDA), returning (normed sum, sum)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)

    def add(self, x: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return add_rms_norm(x, residual, self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """cos/sin tables of rotary position embedding (HF's rotate-half convention).

    inv_freq: [head_dim // 2] float32 (from the loader, which follows the model's rope type);
    attention_scaling: factor on cos/sin (1 except for yarn/longrope).
    """

    def __init__(self, inv_freq: torch.Tensor, attention_scaling: float) -> None:
        super().__init__()
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self.attention_scaling = attention_scaling

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [tokens] -> cos, signed_sin: [tokens, 1, head_dim] in ``dtype``.

        signed_sin = (-sin, sin) over the two halves, so that rotation is ``x*cos + roll(x)*signed_sin``
        (HF's ``rotate_half(x) * sin`` with the sign folded in, once per step instead of per layer).
        """
        freqs = positions[:, None].float() * self.inv_freq.float()[None, :]
        cos, sin = freqs.cos() * self.attention_scaling, freqs.sin() * self.attention_scaling
        cos = torch.cat((cos, cos), dim=-1)[:, None, :]
        signed_sin = torch.cat((-sin, sin), dim=-1)[:, None, :]
        return cos.to(dtype), signed_sin.to(dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
        )
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.split = (q_size, kv_size, kv_size)
        self.qkv_proj = nn.Linear(config.hidden_size, q_size + 2 * kv_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.scale = self.head_dim**-0.5

    def forward(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: StepContext
    ) -> torch.Tensor:
        tokens = hidden.shape[0]
        qkv = self.qkv_proj(hidden)
        v = qkv[:, self.split[0] + self.split[1] :].view(tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is None:  # rotate q and k together: one set of launches per layer
            qk = qkv[:, : self.split[0] + self.split[1]].view(
                tokens, self.num_heads + self.num_kv_heads, self.head_dim
            )
            q, k = rotate(qk, cos, sin).split((self.num_heads, self.num_kv_heads), dim=1)
        else:
            q, k, _ = qkv.split(self.split, dim=-1)
            q = self.q_norm(q.view(tokens, self.num_heads, self.head_dim))
            k = self.k_norm(k.view(tokens, self.num_kv_heads, self.head_dim))
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        out = paged_attention(q, k, v, ctx, self.layer, self.scale)
        return self.o_proj(out.reshape(tokens, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        ctx: StepContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden: this layer's input not yet added to ``residual`` (the stream so far; None at the first
        layer). Returns the MLP output and the stream before it, for the next layer to add."""
        normed, residual = self.input_layernorm.add(hidden, residual)
        normed, residual = self.post_attention_layernorm.add(self.self_attn(normed, cos, sin, ctx), residual)
        return self.mlp(normed), residual


class CausalLM(nn.Module):
    """Embedding, decoder layers, final norm and LM head."""

    def __init__(self, config: ModelConfig, inv_freq: torch.Tensor, attention_scaling: float = 1.0) -> None:
        super().__init__()
        self.config = config
        # no random init (weights are always loaded or set): nn.Embedding's normal_ on the meta device
        # that load_model builds on imports sympy and ~900 modules, 2-3 s of a CPU start-up
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         _weight=torch.empty(config.vocab_size, config.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(inv_freq, attention_scaling)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """hidden: [tokens, hidden_size] input embeddings; positions: [tokens] int64.

        Returns the final hidden states [tokens, hidden_size] (``logits`` maps the ones that need it).
        """
        cos, sin = self.rotary(positions, hidden.dtype)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, cos, sin, ctx)
        return self.norm.add(hidden, residual)[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [n, hidden_size] -> [n, vocab_size] float32."""
        return self.lm_head(hidden).float()
