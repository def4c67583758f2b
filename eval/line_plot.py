"""One-panel line plots for the eval scripts' PNGs (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

# a series: (x values, y values, matplotlib format string, legend label)
Series = tuple[list[float], list[float], str, str]


def line_plot(series: list[Series], path: Path, xlabel: str, ylabel: str, title: str,
              log_x: bool = False, log_y: bool = False, figsize: tuple[float, float] = (6, 4)) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    for xs, ys, fmt, label in series:
        ax.plot(xs, ys, fmt, label=label)
    if log_x:
        ax.set_xscale("log", base=2)
    if log_y:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
