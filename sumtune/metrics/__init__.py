"""The metric registry: every score a comparison table, the W&B summary, validation and the report
show comes from one entry here.

    eval.metrics: [rouge, bertscore, lengths]     # the config (default [rouge]; + toxicity when
                                                  # eval.toxicity_model is set)

A metric is one class with a name, its columns (each with its direction: higher is better, lower
is better, or None for a descriptive column whose differences are not gains), per-example scores
computed from predictions, references (a list per example) and dialogues, and the sentence the
table header says about it (``protocol``). Metrics that need a model (bertscore, toxicity) load
it once per evaluation, on first use, and store their per-example values in predictions.jsonl so
that eval/compare.py rebuilds the tables without the model; the others are recomputed from the
texts whenever a result folder is read.
"""

from __future__ import annotations

from sumtune.errors import SumtuneError
from sumtune.metrics.base import Column, Metric, MetricScores
from sumtune.metrics.bertscore import BertScore
from sumtune.metrics.lengths import Lengths
from sumtune.metrics.rouge import Rouge
from sumtune.metrics.toxicity import Toxicity

REGISTRY: dict[str, type[Metric]] = {m.name: m for m in (Rouge, BertScore, Lengths, Toxicity)}

__all__ = ["REGISTRY", "Column", "Metric", "MetricScores", "build", "column_owner", "columns_of", "configured",
           "get"]


def get(name: str) -> type[Metric]:
    if name not in REGISTRY:
        raise SumtuneError(f"unknown metric '{name}'; known metrics: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def configured(eval_cfg) -> list[str]:
    """The metric names an evaluation scores: ``eval.metrics`` (None: rouge), with toxicity added
    when ``eval.toxicity_model`` is set and the list does not name it (configs written before
    the registry score toxicity as they did)."""
    names = list(eval_cfg.metrics) if eval_cfg.metrics is not None else ["rouge"]
    if eval_cfg.toxicity_model and "toxicity" not in names:
        names.append("toxicity")
    return names


def columns_of(names: list[str]) -> list[Column]:
    return [c for n in names for c in get(n).columns]


def column_owner(column: str, names: list[str]) -> type[Metric] | None:
    """The configured metric that provides ``column``, or None."""
    return next((get(n) for n in names if any(c.name == column for c in get(n).columns)), None)


def build(names: list[str], cfg=None, accelerator=None) -> list[Metric]:
    """Instances of the named metrics; a metric with a model loads it on its first ``score``."""
    return [get(n)(cfg, accelerator) for n in names]
