"""Charts of an evaluation folder (``eval/evaluate.py --out``): ROUGE with its 95% intervals, the
gain over the baseline, each other metric of the evaluation (``eval.metrics``) with its intervals,
and prediction vs reference lengths. The numbers are read from the files
the evaluation wrote (``comparison_ci.csv``, ``*/predictions.jsonl``), never recomputed."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sumtune import metrics, rouge
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
                ci.setdefault(row["model"], {})[row["metric"]] = {k: _number(row[k]) for k in row
                                                                  if k not in ("model", "metric", "better")}
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
SCORE_COLUMNS = ["model", "metric", "mean", "ci_low", "ci_high", "gain_pp", "gain_ci_low_pp", "gain_ci_high_pp",
                 "difference", "difference_ci_low", "difference_ci_high"]


def metrics_in(s: Scores) -> list[tuple[str, list[str]]]:
    """(metric name, its columns) for every registry metric the evaluation's file holds, in the
    registry's order (ROUGE first)."""
    present = {k for per in s.ci.values() for k in per}
    out = []
    for name, metric in metrics.REGISTRY.items():
        cols = [c for c in metric.column_names() if c in present]
        if cols:
            out.append((name, cols))
    return out


def length_rows(s: Scores) -> list[list]:
    return [[name, i, p, r] for name, (preds, refs) in s.lengths.items() for i, (p, r) in enumerate(zip(preds, refs))]


def score_rows(s: Scores) -> list[list]:
    """Every metric column of every candidate (files written before the registry have no
    difference columns: None)."""
    return [[name, k, *(s.ci[name][k].get(c) for c in SCORE_COLUMNS[2:])] for name in s.candidates
            for _, cols in metrics_in(s) for k in cols if k in s.ci[name]]


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


def metric_bars(s: Scores, metric: str, columns: list[str], path: Path, name: str):
    """One panel per column of a metric other than ROUGE: the mean per candidate with its 95%
    interval (the columns of one metric may have different units, e.g. words and shares)."""
    from sumtune.report import plot

    names = [c for c in s.candidates if all(k in s.ci[c] for k in columns)]
    fig, axes = plot.figure(max(6.0, 2.6 * len(columns) + 1.5), 3.8, 1, len(columns))
    title = metrics.get(metric).title
    for ax, k in zip(axes.flat, columns):
        mean = np.array([s.ci[c][k]["mean"] for c in names])
        err = np.array([[m - s.ci[c][k]["ci_low"], s.ci[c][k]["ci_high"] - m] for c, m in zip(names, mean)]).T
        ax.bar(range(len(names)), mean, yerr=err, capsize=2, color=[plot.color(s.candidates.index(c)) for c in names],
               error_kw={"linewidth": 0.9})
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(k, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{name}: {title} per candidate with 95% bootstrap intervals", fontsize=10)
    caption = f"Mean {title} per candidate, one panel per column; error bars: 95% bootstrap interval (comparison_ci.csv)."
    return plot.save(fig, path, f"{name}: {title} per candidate", caption)
