"""Plot eval/bench_attention.py's JSON: per-layer decode time against context, one panel per batch.

    python -m eval.plot_bench_attention eval/results/bench_attention.json [out.png]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def plot(json_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads(Path(json_path).read_text())
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        mine = [r for r in rows if r["batch"] == batch]

        def series(method, budget=None, page_size=None):
            """Fastest time per context over page sizes (unless one is given)."""
            best: dict[int, float] = {}
            for r in mine:
                if (
                    r["method"] == method
                    and r["budget"] == budget
                    and (page_size is None or r["page_size"] == page_size)
                ):
                    best[r["context"]] = min(best.get(r["context"], float("inf")), r["time_us"])
            xs = sorted(best)
            return xs, [best[x] for x in xs]

        ax.plot(*series("sdpa"), "k-o", label="dense SDPA")
        ax.plot(*series("dense_paged"), "k--s", label="dense paged (ours)")
        for budget, color in ((1024, "tab:green"), (2048, "tab:blue"), (4096, "tab:purple")):
            xs, ys = series("unique_total", budget)
            if xs:
                ax.plot(xs, ys, "-^", color=color, label=f"UNIQUE total, budget {budget}")
        xs, ys = series("quest_total", 2048)
        if xs:
            ax.plot(xs, ys, ":v", color="tab:red", label="Quest total, budget 2048")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="context (tokens)",
            ylabel="us per layer",
            title=f"batch {batch}",
        )
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    device = rows[0].get("device", "") if rows else ""
    fig.suptitle(f"Decode attention per layer, bf16, Hq=32 Hkv=8 d=128 ({device})")
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)


if __name__ == "__main__":
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "eval/results/bench_attention.json")
    plot(src, Path(sys.argv[2]) if len(sys.argv) > 2 else src.with_suffix(".png"))
