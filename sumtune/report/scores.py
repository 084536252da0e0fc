"""Charts of an evaluation folder (``eval/evaluate.py --out``): ROUGE with its 95% intervals, the
gain over the baseline, and prediction vs reference lengths. The numbers are read from the files
the evaluation wrote (``comparison_ci.csv``, ``*/predictions.jsonl``), never recomputed."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sumtune import rouge
from sumtune.compare import reference_words
from sumtune.data import iter_jsonl
from sumtune.errors import SumtuneError


@dataclass
class Scores:
    folder: Path
    baseline: str
    candidates: list[str]
    ci: dict[str, dict[str, dict[str, float | None]]]  # candidate -> metric -> comparison_ci.csv row
    lengths: dict[str, tuple[list[int], list[int]]]  # candidate -> (prediction words, reference words)


def _number(text: str) -> float | None:
    return float(text) if text not in ("", None) else None


def read(folder: Path) -> Scores:
    path = folder / "comparison_ci.csv"
    ci: dict[str, dict[str, dict]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.DictReader(f), start=2):
            try:
                ci.setdefault(row["model"], {})[row["metric"]] = {k: _number(row[k]) for k in row if k not in ("model", "metric")}
            except (KeyError, ValueError):
                raise SumtuneError(f"{path} line {lineno}: not a comparison_ci.csv row written by eval/evaluate.py") from None
    if not ci:
        raise SumtuneError(f"{path}: no rows")
    candidates = list(ci)
    baselines = [c for c in candidates if all(v["gain_pp"] is None for v in ci[c].values())]
    lengths = {}
    for name in candidates:
        preds = folder / name / "predictions.jsonl"
        if preds.is_file():
            rows = [row for _, row in iter_jsonl(preds)]
            lengths[name] = ([len(r["prediction"].split()) for r in rows], [round(reference_words(r)) for r in rows])
    return Scores(folder, baselines[0] if baselines else candidates[0], candidates, ci, lengths)


LENGTH_COLUMNS = ["candidate", "example", "prediction_words", "reference_words"]
SCORE_COLUMNS = ["model", "metric", "mean", "ci_low", "ci_high", "gain_pp", "gain_ci_low_pp", "gain_ci_high_pp"]


def length_rows(s: Scores) -> list[list]:
    return [[name, i, p, r] for name, (preds, refs) in s.lengths.items() for i, (p, r) in enumerate(zip(preds, refs))]


def score_rows(s: Scores) -> list[list]:
    return [[name, k, *(s.ci[name][k][c] for c in SCORE_COLUMNS[2:])] for name in s.candidates for k in rouge.ROUGE_TYPES
            if k in s.ci[name]]


def _bars(ax, s: Scores, names: list[str], value: str, low: str, high: str, scale: float = 1.0) -> None:
    from sumtune.report import plot

    metrics = rouge.ROUGE_TYPES
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        x = np.arange(len(metrics)) + (i - (len(names) - 1) / 2) * width
        mean = np.array([s.ci[name][k][value] * scale for k in metrics])
        err = np.array([[mean[j] - s.ci[name][k][low] * scale, s.ci[name][k][high] * scale - mean[j]]
                        for j, k in enumerate(metrics)]).T
        ax.bar(x, mean, width, yerr=err, capsize=2, color=plot.color(s.candidates.index(name)), label=name,
               error_kw={"linewidth": 0.9})
    ax.set_xticks(range(len(metrics)), metrics)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, title="candidate", loc="upper left", bbox_to_anchor=(1.01, 1.0))


def rouge_bars(s: Scores, path: Path, name: str):
    from sumtune.report import plot

    fig, axes = plot.figure(max(9.0, 4 + 0.45 * len(s.candidates) * 4 * 0.5), 5.2)
    _bars(axes[0, 0], s, s.candidates, "mean", "ci_low", "ci_high")
    axes[0, 0].set_ylabel("ROUGE F-measure (0-1), mean over examples")
    axes[0, 0].set_xlabel("metric")
    axes[0, 0].set_ylim(0, None)
    axes[0, 0].set_title(f"{name}: ROUGE per candidate with 95% bootstrap intervals", fontsize=10)
    caption = "Mean ROUGE F-measure per candidate; error bars: 95% bootstrap interval (comparison_ci.csv)."
    return plot.save(fig, path, f"{name}: ROUGE per candidate", caption)


def gain_bars(s: Scores, path: Path, name: str):
    from sumtune.report import plot

    others = [c for c in s.candidates if c != s.baseline]
    fig, axes = plot.figure(max(9.0, 4 + 0.45 * len(others) * 4 * 0.5), 5.2)
    _bars(axes[0, 0], s, others, "gain_pp", "gain_ci_low_pp", "gain_ci_high_pp")
    axes[0, 0].axhline(0, color="black", linewidth=0.8)
    axes[0, 0].set_ylabel(f"gain over {s.baseline} (percentage points)")
    axes[0, 0].set_xlabel("metric")
    axes[0, 0].set_title(f"{name}: gain over {s.baseline}, 95% paired bootstrap intervals (one that crosses 0: no clear "
                         "gain)", fontsize=10)
    caption = (f"Absolute gain over the baseline '{s.baseline}' in ROUGE percentage points; error bars: 95% paired "
               "bootstrap interval (both candidates resampled on the same examples).")
    return plot.save(fig, path, f"{name}: gain over {s.baseline}", caption)


def length_histograms(s: Scores, path: Path, name: str):
    from sumtune.report import plot

    names = list(s.lengths)
    cols = min(4, len(names))
    rows_ = -(-len(names) // cols)
    fig, axes = plot.figure(3.6 * cols + 0.6, 2.9 * rows_ + 0.7, rows_, cols)
    top = max(max(p + r) for p, r in s.lengths.values()) if names else 1
    bins = np.arange(0, top + 2) if top <= 60 else np.linspace(0, top + 1, 61)
    for ax, cand in zip(axes.flat, names):
        preds, refs = s.lengths[cand]
        ax.hist(refs, bins=bins, color="grey", alpha=0.55, label="reference")
        ax.hist(preds, bins=bins, histtype="step", linewidth=1.5, color=plot.color(s.candidates.index(cand)),
                label="prediction")
        ax.set_title(f"{cand}: mean {np.mean(preds):.1f} vs {np.mean(refs):.1f} words", fontsize=9)
        ax.set_xlim(0, bins[-1])  # the same scale in every panel, each with its own tick labels
        ax.set_xlabel("summary length (words)")
        ax.set_ylabel("examples")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"{name}: prediction vs reference length per candidate")
    caption = "Length in words (whitespace-separated) of each prediction and its reference, per candidate."
    return plot.save(fig, path, f"{name}: prediction vs reference length", caption)
