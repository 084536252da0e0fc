"""Figures without a display.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), which renders
through Agg on ``savefig`` and never touches pyplot's global state or the user's backend: nothing
needs a display, and importing sumtune does not change how a user's own plots show. Every figure
has a fixed size in inches and one DPI, and uses constrained layout instead of a tight bounding
box, so a PNG's pixel size is known in advance (width x DPI) and no panel is cut off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DPI = 100
# Colours for runs and candidates (matplotlib's default cycle, named so that runs keep their colour
# from one figure to the next).
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf"]


def color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def palette(n: int) -> list:
    """n colours that stay apart: the ten above, then tab20, then samples of a continuous map."""
    from matplotlib import colormaps

    if n <= len(COLORS):
        return COLORS[:n]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](i / (n - 1)) for i in range(n)]


@dataclass
class Picture:
    """A PNG written for the report: where, what it shows, and its pixel size."""

    path: Path
    title: str
    caption: str
    width: int
    height: int

    @property
    def key(self) -> str:
        return self.path.stem


def figure(width: float, height: float, rows: int = 1, cols: int = 1, **kwargs):
    """(figure, 2-D array of axes) of ``width`` x ``height`` inches."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    return fig, axes


def stacked(width: float, heights: list[float]):
    """(figure, [axes]) of panels one above the other, each laid out on its own (subfigures), so that
    a legend beside one panel does not squeeze the others."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, sum(heights)), dpi=DPI, layout="constrained")
    subs = fig.subfigures(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0] if len(heights) > 1 else [fig]
    return fig, [sub.subplots() for sub in subs]


def save(fig, path: Path, title: str, caption: str) -> Picture:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": "sumtune"})
    width, height = (round(v * DPI) for v in fig.get_size_inches())
    return Picture(path, title, caption, width, height)


def heatmap(ax, values, rows: list[str], cols: list[str], label: str, cmap: str = "viridis", fmt: str = "{:.3g}",
            annotate: bool = True) -> None:
    """``values`` (rows x cols, NaN where a layer has no such module) as coloured cells with a
    labelled colour bar; the numbers are written in the cells while they stay readable."""
    import numpy as np

    data = np.ma.masked_invalid(np.asarray(values, dtype=float))
    image = ax.imshow(data, aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_facecolor("#eeeeee")  # cells of modules a layer does not have
    bar = ax.figure.colorbar(image, ax=ax, shrink=0.9)
    bar.set_label(label)
    if annotate and len(rows) * len(cols) <= 200:
        for i in range(len(rows)):
            for j in range(len(cols)):
                if data.mask is not np.ma.nomask and data.mask[i, j]:
                    continue
                v = data[i, j]
                r, g, b, _ = image.cmap(image.norm(v))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # the cell's luminance picks the text colour
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7, color="white" if dark else "black")
