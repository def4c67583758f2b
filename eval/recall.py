"""Attention-mass recall of page selectors: the share of a query's true attention weight that
falls in the pages it chose.

(a) synthetic keys where some pages hide a few large keys among many small ones (the dilution case
the std offset targets), and (b) real queries and keys captured from a real LLM reading a long
real text. Compares UNIQUE (gauss and l1 offsets, several lambda), Quest and mean-only at budgets
of 1/8 .. 1/64 of the context. Prints a table, writes JSON and a PNG plot.

    python -m eval.recall --output eval/results            # synthetic
    python -m eval.recall --model DIR --text FILE          # plus a real model on a real text
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from asr.attention.config import UniqueConfig
from asr.attention.scoring import score_from_stats
from asr.attention.selection import select_pages_reference
from asr.attention.softmask import sequence_page_stats
from eval.capture import capture_attention

SELECTORS = {
    "unique-gauss-0.5": dict(method="unique", offset="gauss", lam=0.5),
    "unique-gauss-1": dict(method="unique", offset="gauss", lam=1.0),
    "unique-gauss-2": dict(method="unique", offset="gauss", lam=2.0),
    "unique-gauss-4": dict(method="unique", offset="gauss", lam=4.0),
    "unique-l1-0.25": dict(method="unique", offset="l1", lam=0.25),
    "unique-l1-0.5": dict(method="unique", offset="l1", lam=0.5),
    "unique-l1-1": dict(method="unique", offset="l1", lam=1.0),
    "unique-l1-2": dict(method="unique", offset="l1", lam=2.0),
    "quest": dict(method="quest"),
    "mean": dict(method="mean"),
}
BUDGET_FRACTIONS = [8, 16, 32, 64]


@dataclass
class RecallRow:
    source: str
    selector: str
    budget_fraction: str
    budget_tokens: int
    context: int
    recall: float


def page_recall(q: torch.Tensor, keys: torch.Tensor, config: UniqueConfig) -> torch.Tensor:
    """Recall of one selector for queries that each attend all given keys.

    q: [n, q_heads, d] queries at the end of the context; keys: [n, kv_heads, seq, d].
    Returns [n, kv_heads] recall in [0, 1].
    """
    n, q_heads, d = q.shape
    kv_heads, seq = keys.shape[1], keys.shape[2]
    group = q_heads // kv_heads
    stats = sequence_page_stats(keys, config.page_size)  # [n, kv_heads, pages, 4, d]
    scores = score_from_stats(q[:, :, None], stats, config.method, config.offset, config.lam)[:, :, 0]
    seq_lens = torch.full((n,), seq, dtype=torch.int32)
    chosen = select_pages_reference(scores, seq_lens, config).long()
    logits = torch.einsum("nhgd,nhtd->nhgt", q.float().view(n, kv_heads, group, d), keys.float()) / math.sqrt(
        d
    )
    pages = stats.shape[2]
    padded = torch.nn.functional.pad(logits.softmax(-1), (0, pages * config.page_size - seq))
    mass = padded.view(n, kv_heads, group, pages, config.page_size).sum(dim=(2, 4)) / group
    return mass.gather(-1, chosen.clamp(min=0)).masked_fill(chosen < 0, 0.0).sum(-1)


def synthetic_qk(n: int, q_heads: int, kv_heads: int, seq: int, d: int, page_size: int, seed: int):
    """Keys whose pages differ in mean (the signal every selector sees) and, in 2% of pages, one or
    two keys with a logit 6-9 above the rest, aligned with the group's query direction: hidden
    among small keys, they barely move their page's mean (the dilution case).

    Returns q: [n, q_heads, d], keys: [n, kv_heads, seq, d].
    """
    gen = torch.Generator().manual_seed(seed)
    group = q_heads // kv_heads
    shared = torch.randn(n, kv_heads, 1, d, generator=gen)
    q = (shared + 0.5 * torch.randn(n, kv_heads, group, d, generator=gen)).view(n, q_heads, d)
    pages = seq // page_size
    page_mean = 1.5 * torch.randn(n, kv_heads, pages, 1, d, generator=gen)
    keys = page_mean + 0.6 * torch.randn(n, kv_heads, pages, page_size, d, generator=gen)
    norm = shared[:, :, 0].norm(dim=-1, keepdim=True)
    direction = shared[:, :, 0] / norm  # [n, kv_heads, d]
    spike_pages = torch.rand(n, kv_heads, pages, generator=gen) < 0.02
    spikes = torch.randint(1, 3, (n, kv_heads, pages), generator=gen)
    for slot in range(2):
        has = spike_pages & (spikes > slot)
        logit = 6.0 + 3.0 * torch.rand(n, kv_heads, pages, generator=gen)
        boost = (has * logit)[..., None] * (direction * math.sqrt(d) / norm)[:, :, None, :]
        keys[:, :, :, slot] += boost
    return q, keys.view(n, kv_heads, pages * page_size, d)


def capture_real_qk(model_dir: str, text: str, num_queries: int, max_tokens: int):
    """Post-RoPE queries and keys of every layer of a Hugging Face causal LM reading ``text``.

    Returns (samples, tokens read): one (q [1, q_heads, d], keys [1, kv_heads, t + 1, d]) per layer
    and query position t, positions spread over the last quarter of the text, each query with
    exactly its causal prefix.
    """
    captured, seq = capture_attention(model_dir, text, max_tokens)
    positions = torch.linspace(seq * 3 // 4, seq - 1, num_queries).long().tolist()
    samples = [(q[None, t], k[None, : t + 1].transpose(1, 2)) for q, k, _ in captured for t in positions]
    return samples, seq


def measure(source: str, qk_sets, context: int, page_size: int) -> list[RecallRow]:
    rows = []
    for name, selector in tqdm(SELECTORS.items(), desc=f"recall {source}"):
        for fraction in BUDGET_FRACTIONS:
            budget = max(page_size * 4, context // fraction // page_size * page_size)
            config = UniqueConfig(page_size=page_size, budget_tokens=budget, **selector)
            recall = torch.cat([page_recall(q, k, config).flatten() for q, k in qk_sets]).mean().item()
            rows.append(RecallRow(source, name, f"1/{fraction}", budget, context, recall))
    return rows


def print_table(rows: list[RecallRow]) -> None:
    for source in dict.fromkeys(r.source for r in rows):
        subset = [r for r in rows if r.source == source]
        print(f"\nrecall — {source} (context {subset[0].context} tokens)")
        print(f"{'selector':<18}" + "".join(f"{'1/' + str(f):>9}" for f in BUDGET_FRACTIONS))
        for name in SELECTORS:
            values = [r.recall for r in subset if r.selector == name]
            print(f"{name:<18}" + "".join(f"{v:>9.3f}" for v in values))


def plot(rows: list[RecallRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = list(dict.fromkeys(r.source for r in rows))
    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 4), squeeze=False)
    for ax, source in zip(axes[0], sources):
        for name in SELECTORS:
            values = [r.recall for r in rows if r.source == source and r.selector == name]
            ax.plot(BUDGET_FRACTIONS, values, marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(BUDGET_FRACTIONS, [f"1/{f}" for f in BUDGET_FRACTIONS])
        ax.set_xlabel("budget (share of context)")
        ax.set_ylabel("attention-mass recall")
        ax.set_title(source)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default="eval/results", help="directory for recall.json and recall.png")
    parser.add_argument("--context", type=int, default=16384, help="synthetic context length in tokens")
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8, help="synthetic queries")
    parser.add_argument("--model", help="Hugging Face model directory for real queries/keys ('embedded': the "
                        "embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--text", help="long real text file read by --model (default: Python's own reference "
                        "documentation, pydoc_data.topics)")
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--queries", type=int, default=8, help="real query positions per layer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    q, keys = synthetic_qk(args.samples, 16, 4, args.context, 128, args.page_size, args.seed)
    rows = measure(
        "synthetic",
        [(q[i : i + 1], keys[i : i + 1]) for i in range(args.samples)],
        args.context,
        args.page_size,
    )
    if args.model:
        if args.text:
            text, text_name = Path(args.text).read_text(errors="replace"), Path(args.text).name
        else:
            from pydoc_data.topics import topics

            text, text_name = "\n\n".join(topics.values()), "Python reference docs"
        model_dir = args.model
        if model_dir == "embedded":
            from asr.llm.embedded import embedded_llm_dir

            model_dir = str(embedded_llm_dir())
        samples, seq = capture_real_qk(model_dir, text, args.queries, args.max_tokens)
        rows += measure(f"real: {Path(model_dir).name} on {text_name}", samples, seq, args.page_size)
    print_table(rows)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recall.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    plot(rows, out / "recall.png")
    print(f"\nwrote {out / 'recall.json'} and {out / 'recall.png'}")


if __name__ == "__main__":
    main()
