"""What every metric is: see sumtune/metrics/__init__.py."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sumtune.errors import SumtuneError


@dataclass(frozen=True)
class Column:
    """One score per example. ``higher_is_better``: True, False, or None (descriptive: the tables
    show differences, never gains). ``points``: a fraction in [0, 1] whose gain the tables also
    give in percentage points (ROUGE, BERTScore)."""

    name: str
    higher_is_better: bool | None
    points: bool = False
    digits: int = 4

    @property
    def gain(self) -> bool:
        """Reported as a gain in percentage points (gain_pp.csv, the gain columns)."""
        return self.points and self.higher_is_better is True


@dataclass
class MetricScores:
    """Per column, the per-example scores (an example: one dialogue with its references), the
    multi-reference score; ``over_refs`` per column the mean over each example's references, for
    the metrics that define one (ROUGE)."""

    values: dict[str, np.ndarray]
    over_refs: dict[str, np.ndarray] | None = None


class Metric:
    name: str = ""
    title: str = ""
    columns: tuple[Column, ...] = ()
    # Per-example values are written into predictions.jsonl rows (metrics that need a model:
    # eval/compare.py cannot recompute them); the others are recomputed from the texts.
    stored: bool = False

    def __init__(self, cfg=None, accelerator=None):
        self.cfg, self.acc = cfg, accelerator

    def score(self, predictions: list[str], references: list[list[str]], dialogues: list[str]) -> MetricScores:
        raise NotImplementedError

    def settings(self) -> dict:
        """What metrics.json records about how the scores were made (a model, a layer...)."""
        return {}

    @classmethod
    def protocol(cls, settings: list[dict], examples: int, multi_reference: bool) -> str:
        """What the table header says about the numbers, from the candidates' recorded settings."""
        return ""

    @classmethod
    def column_names(cls) -> list[str]:
        return [c.name for c in cls.columns]

    def row_fields(self, scores: MetricScores, i: int) -> dict:
        """The fields of predictions.jsonl row ``i`` (stored metrics only)."""
        return {c: float(scores.values[c][i]) for c in self.column_names()} if self.stored else {}

    @classmethod
    def from_records(cls, records: list[dict], where: str) -> MetricScores | None:
        """Per-example scores of a result folder's rows: recomputed from the texts, or read from
        the rows (stored metrics; None when the rows carry none)."""
        if not cls.stored:
            return cls().score([r["prediction"] for r in records], [references_of(r) for r in records],
                               [r.get("dialogue", "") for r in records])
        names = cls.column_names()
        if not any(names[0] in r for r in records):
            return None
        for lineno, r in enumerate(records, start=1):
            for c in names:
                if not isinstance(r.get(c), (int, float)):
                    raise SumtuneError(f"{where} line {lineno}: field '{c}' ({cls.name}) is missing or not a number; "
                                       f"re-run eval/evaluate.py with eval.metrics including {cls.name}")
        return MetricScores({c: np.array([r[c] for r in records], dtype=np.float64) for c in names})


def references_of(record: dict) -> list[str]:
    """A predictions row's references: ``references`` (a list), or the one ``reference`` of rows
    written before multi-reference evaluation."""
    refs = record.get("references")
    return list(refs) if isinstance(refs, list) else [record["reference"]]


def sharded(accelerator, n: int, fn) -> list:
    """Every rank computes ``fn(indices)`` (a list of values) for its share of ``range(n)``; every
    rank gets all n values in order. Without an accelerator (or with one process) this process
    computes all."""
    world = accelerator.num_processes if accelerator is not None else 1
    if world == 1:
        return list(fn(list(range(n))))
    from accelerate.utils import gather_object

    mine = list(range(accelerator.process_index, n, world))
    pairs = list(zip(mine, fn(mine)))
    out = [None] * n
    for i, value in gather_object(pairs):
        out[i] = value
    return out
