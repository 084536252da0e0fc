"""Training curves from ``train_log.jsonl``, several runs overlaid."""

from __future__ import annotations

import json
from pathlib import Path

from sumtune.errors import SumtuneError

# (title, y-axis label, [(train_log key, line style)], log scale)
PANELS = [
    ("loss (solid: training, dashed: validation)", "cross-entropy (nats per target token)",
     [("loss", "-"), ("val_loss", "--")], False),
    ("learning rate", "learning rate", [("lr", "-")], False),
    ("gradient norm", "global L2 norm before clipping", [("grad_norm", "-")], True),
    ("validation ROUGE-1", "ROUGE-1 F (0-1)", [("val_rouge1", "-")], False),
    ("validation ROUGE-Lsum", "ROUGE-Lsum F (0-1)", [("val_rougeLsum", "-")], False),
    ("training throughput", "real (non-padding) tokens / s", [("tokens_per_s", "-")], False),
]


def read_log(path: Path) -> dict[str, list[tuple[int, float]]]:
    """metric -> [(step, value)] from one train_log.jsonl."""
    series: dict[str, list[tuple[int, float]]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise SumtuneError(f"{path} line {lineno}: not a train_log.jsonl record (a JSON object with a step)") from None
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(key, []).append((step, float(value)))
    return series


def rows(logs: dict[str, dict[str, list[tuple[int, float]]]]) -> list[list]:
    return [[run, step, metric, value] for run, series in logs.items() for metric, points in series.items()
            for step, value in points]


def figure(logs: dict[str, dict[str, list[tuple[int, float]]]], path: Path):
    from matplotlib.ticker import MaxNLocator

    from sumtune.report import plot

    fig, axes = plot.figure(15, 8, 2, 3)
    for ax, (title, ylabel, keys, log_scale) in zip(axes.flat, PANELS):
        drawn = False
        for i, series in enumerate(logs.values()):
            for key, style in keys:
                points = series.get(key)
                if not points:
                    continue
                steps, values = zip(*points)
                ax.plot(steps, values, style, color=plot.color(i), marker="o" if len(points) < 8 else None,
                        markersize=3, linewidth=1.4)
                drawn = True
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if not drawn:
            names = " or ".join(k for k, _ in keys)
            ax.text(0.5, 0.5, f"no {names} in the log\n(see docs/training.md: train.rouge_every)" if "rouge" in names
                    else f"no {names} in the log", ha="center", va="center", transform=ax.transAxes, color="grey")
            continue
        if log_scale:
            ax.set_yscale("log")
    # One legend for all panels (a colour per run), below them: nothing is hidden behind it.
    for i, run in enumerate(logs):
        axes[0, 0].plot([], [], color=plot.color(i), label=run)
    fig.legend(loc="outside lower center", ncol=min(len(logs), 6), fontsize=9, title="run")
    fig.suptitle("training curves (train_log.jsonl)" + (f" of {len(logs)} runs" if len(logs) > 1 else ""))
    caption = ("Training loss (solid) and validation loss (dashed), learning rate, gradient norm, the validation ROUGE "
               "logged during training (train.rouge_every) and real-token throughput of the training steps, against "
               "the optimizer step; one colour per run.")
    return plot.save(fig, path, "training curves", caption)
