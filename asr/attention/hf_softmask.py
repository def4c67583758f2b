"""``attn_implementation="unique_softmask"``: soft-mask attention in Hugging Face Llama-family models.

``register()`` adds the attention function to transformers' ``AttentionInterface`` and a mask
function to its ``AttentionMaskInterface`` that hands the 2D padding mask through as it is (causality
and pages are the attention function's job). ``import asr`` runs ``register()`` as soon as
transformers' modeling code is imported (``asr.transformers_hook``), so any model built after it,
from ``input_ids`` or ``inputs_embeds``, accepts the name.

The hyper-parameters live on the model's config as ``config.unique_softmask``, a JSON-able dict (a
fully fine-tuned model saves them with its config); ``set_soft_mask(model, SoftMaskConfig)`` changes
them between steps (temperature annealing, budget per step). Without it the defaults of
``SoftMaskConfig`` apply. Rows may be left- or right-padded (tokens contiguous); left-padded rows are
laid out from their first token, so pages start where decode's pages start.
"""

from __future__ import annotations

import dataclasses

import torch

from asr.attention.config import SoftMaskConfig, UniqueConfig
from asr.attention.softmask_blocks import soft_mask_attention

ATTENTION_NAME = "unique_softmask"
CONFIG_KEY = "unique_softmask"  # attribute of the Hugging Face config holding the hyper-parameters


def soft_mask_to_dict(config: SoftMaskConfig) -> dict:
    """JSON-able form of ``config`` (as stored on a Hugging Face config)."""
    return dataclasses.asdict(config)


def soft_mask_from_dict(values: dict) -> SoftMaskConfig:
    sparse = values.get("sparse")
    return SoftMaskConfig(
        sparse=None if sparse is None else UniqueConfig(**sparse),
        temperature=values["temperature"],
        query_block=values["query_block"],
    )


def set_soft_mask(model: torch.nn.Module, config: SoftMaskConfig) -> None:
    """Use ``config`` in every ``unique_softmask`` layer of ``model`` (a Hugging Face model, or one
    wrapped by DistributedDataParallel) from its next forward pass on."""
    model = getattr(model, "module", model)
    setattr(model.config, CONFIG_KEY, soft_mask_to_dict(config))


def soft_mask_of(hf_config) -> SoftMaskConfig:
    """The soft-mask hyper-parameters stored on a Hugging Face config (defaults if none)."""
    values = getattr(hf_config, CONFIG_KEY, None)
    return SoftMaskConfig() if values is None else soft_mask_from_dict(values)


def padding_mask(batch_size: int, q_length: int, kv_length: int, attention_mask=None, **kwargs):
    """Mask function for ``AttentionMaskInterface``: the 2D padding mask [batch, kv_length] bool,
    or None when there is none."""
    return None if attention_mask is None else attention_mask[:, -kv_length:]


def padding_layout(attention_mask: torch.Tensor | None, batch: int, queries: int, keys: int, device):
    """Where each row's tokens lie: (key_order [batch, keys] or None, key_lengths [batch],
    query_positions [batch, queries], pad_queries [batch, queries] bool or None).

    key_order gathers a left-padded row's keys so they start at index 0; the queries are the last
    ``queries`` of the ``keys`` positions. Raises ValueError for rows whose tokens are not contiguous.
    """
    index = torch.arange(keys, device=device)
    default_positions = (torch.arange(queries, device=device) + keys - queries).expand(batch, queries)
    if attention_mask is None:
        return None, torch.full((batch,), keys, device=device), default_positions, None
    valid = attention_mask.bool()
    lengths = valid.sum(dim=1)
    starts = valid.int().argmax(dim=1)
    window = (index >= starts[:, None]) & (index < (starts + lengths)[:, None])
    if not torch.equal(window, valid):
        raise ValueError(
            f"{ATTENTION_NAME} needs each row's tokens contiguous (left or right padding); "
            "unpack packed sequences into rows"
        )
    positions = default_positions - starts[:, None]
    pad_queries = positions < 0
    if not bool(starts.any()):
        return None, lengths.clamp(min=1), positions, None
    key_order = (index + starts[:, None]) % keys
    return key_order, lengths.clamp(min=1), positions.clamp(min=0), pad_queries


def softmask_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The ``AttentionInterface`` function. query: [batch, q_heads, queries, head_dim]; key, value:
    [batch, kv_heads, keys, head_dim]; attention_mask: [batch, keys] bool or None (``padding_mask``).
    Returns ([batch, queries, q_heads, head_dim], None). Layers below ``sparse.dense_layers`` attend
    densely; padded queries get zeros."""
    if dropout:
        raise ValueError(f"{ATTENTION_NAME} has no attention dropout; set attention_dropout=0")
    config = soft_mask_of(module.config)
    if config.sparse is not None and getattr(module, "layer_idx", 0) < config.sparse.dense_layers:
        config = dataclasses.replace(config, sparse=None)
    batch, _, queries, _ = query.shape
    key_order, key_lengths, positions, pad_queries = padding_layout(
        attention_mask, batch, queries, key.shape[2], query.device
    )
    if key_order is not None:
        gather = key_order[:, None, :, None].expand(-1, key.shape[1], -1, key.shape[3])
        key, value = key.gather(2, gather), value.gather(2, gather)
    out = soft_mask_attention(query, key, value, config, scaling, key_lengths, positions)
    if pad_queries is not None:
        out = out.masked_fill(pad_queries[:, None, :, None], 0.0)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``attn_implementation="unique_softmask"`` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, softmask_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, padding_mask)
