"""UNIQUE top-k sparse attention over a paged KV cache: cache, scoring, selection, decode, soft mask."""

from asr.attention.backend import DecodeMetadata, decode_attention
from asr.attention.config import UniqueConfig
from asr.attention.paged_cache import CacheShape, PagedKVCache

__all__ = ["CacheShape", "DecodeMetadata", "PagedKVCache", "UniqueConfig", "decode_attention"]
