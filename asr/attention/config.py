"""Configuration of the paged KV cache and of UNIQUE top-k page selection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ScoreMethod = Literal["unique", "quest", "mean"]
UniqueOffset = Literal["gauss", "l1"]


@dataclass(frozen=True)
class UniqueConfig:
    """How decode attention picks the pages it reads.

    page_size: tokens per KV page (16 is the default of most paged engines; 32 halves the
        page-statistics bytes a decode step must read).
    budget_tokens: tokens attended per decode step and kv head; ``budget_tokens // page_size``
        pages are chosen. A context that fits the budget is attended densely.
    method: ``unique`` scores pages from key mean and std, ``quest`` from key min/max,
        ``mean`` from the key mean alone (an ablation).
    offset: the std term of UNIQUE: ``gauss`` adds ``sum_d q_d^2 sigma_d^2 / (2 sqrt(d))`` (log of
        the expected exp-logit for Gaussian keys, scaled by sqrt(d) like ``q . mu``); ``l1`` adds
        ``lam * sum_d |q_d| sigma_d`` (a bound-like offset).
    lam: weight of the ``l1`` offset (and a multiplier on the ``gauss`` one).
    sink_pages: leading pages always read (attention sinks).
    local_pages: newest pages always read (the local window, including the partial last page).
    dense_layers: the first ``dense_layers`` decoder layers always attend densely.
    """

    page_size: int = 16
    budget_tokens: int = 2048
    method: ScoreMethod = "unique"
    offset: UniqueOffset = "gauss"
    lam: float = 1.0
    sink_pages: int = 1
    local_pages: int = 2
    dense_layers: int = 0

    def __post_init__(self) -> None:
        if self.page_size < 1:
            raise ValueError(f"page_size must be positive, got {self.page_size}")
        if self.budget_tokens < self.page_size * (self.sink_pages + self.local_pages):
            raise ValueError(
                f"budget_tokens={self.budget_tokens} cannot hold the {self.sink_pages} sink and "
                f"{self.local_pages} local pages of {self.page_size} tokens; raise the budget"
            )
        if self.method not in ("unique", "quest", "mean"):
            raise ValueError(f"unknown page scoring method {self.method!r}")
        if self.offset not in ("gauss", "l1"):
            raise ValueError(f"unknown UNIQUE offset {self.offset!r}")

    @property
    def num_select(self) -> int:
        """Pages read per decode step and kv head."""
        return self.budget_tokens // self.page_size


@dataclass(frozen=True)
class SoftMaskConfig:
    """Training-time attention that imitates UNIQUE decoding with a soft top-k page mask.

    sparse: the decode-time selection the mask stands for (page size, budget, scoring method and
        offset, lam, sink and local pages, dense first layers); None attends densely (causal).
    temperature: T of the page weight ``sigmoid((s - tau) / T)``, in units of page score (``q . k``
        summed over a GQA group); as T -> 0 the mask becomes the hard top-k mask. Training anneals it.
    query_block: queries computed together; memory per block is about
        ``batch * q_heads * query_block * seq`` float32 values (recomputed block by block in backward).
    """

    sparse: UniqueConfig | None = UniqueConfig(budget_tokens=1024)
    temperature: float = 1.0
    query_block: int = 256

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.query_block < 1:
            raise ValueError(f"query_block must be positive, got {self.query_block}")


@dataclass(frozen=True)
class UniSparseConfig:
    """How a block-sparse (UniSparse) prefill picks the key blocks each query block attends.

    block_size: tokens per query block and per key block (a multiple of the cache's page size).
    granularities: queries per composite query at each scoring granularity (each divides
        ``block_size``): the new queries are average-pooled in runs of that many positions and
        scored against every cached key; the block masses estimated at every granularity are
        averaged (``asr.attention.block_selection``). One granularity of a whole block by default:
        on SmolLM2-135M reading real text, adding 16 or 32 raised the mass recall by 0.001-0.008
        for 2.5-5x the scoring work.
    mass: a query block keeps the fewest key blocks, highest estimated attention first, that hold
        this share of its estimated attention mass (forced blocks count towards it).
    max_blocks: at most this many key blocks are chosen besides the forced ones (the cost of a
        query block stays flat as the context grows).
    sink_blocks: leading key blocks always attended (attention sinks).
    local_blocks: key blocks always attended up to the query block's own (the diagonal, causal).
    min_context: contexts (cached plus new tokens) shorter than this are prefilled densely.
    candidate_blocks: on the CPU, past this many cached key blocks (plus the sink blocks) the
        composites score key by key only this many of them, the ones their logits could peak in
        (``asr.attention.block_selection``), so a prefill's scoring stops growing with the context;
        0: every cached key, always.
    dense_last_blocks: the last this many query blocks of each prefill attend every key block they
        may see (a question at the end of a long prompt, which the answer reads directly); 0: none.
    """

    block_size: int = 64
    granularities: tuple[int, ...] = (64,)
    mass: float = 0.95
    max_blocks: int = 64
    sink_blocks: int = 1
    local_blocks: int = 2
    min_context: int = 4096
    candidate_blocks: int = 64
    dense_last_blocks: int = 0

    def __post_init__(self) -> None:
        if self.block_size < 1 or any(g < 1 or self.block_size % g for g in self.granularities):
            raise ValueError(
                f"every granularity {self.granularities} must divide block_size={self.block_size}"
            )
        if not self.granularities:
            raise ValueError("give at least one scoring granularity")
        if not 0 < self.mass <= 1:
            raise ValueError(f"mass must be in (0, 1], got {self.mass}")
        if min(self.max_blocks, self.sink_blocks, self.dense_last_blocks) < 0 or self.local_blocks < 1:
            raise ValueError("need max_blocks, sink_blocks and dense_last_blocks >= 0 and local_blocks >= 1 "
                             "(the diagonal)")

    @property
    def max_chosen(self) -> int:
        """Most key blocks one query block attends (the width of a block list)."""
        return self.sink_blocks + self.local_blocks + self.max_blocks
