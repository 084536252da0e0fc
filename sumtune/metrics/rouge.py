"""ROUGE as sumtune.rouge scores it (rouge_score, stemmed, F-measure; several references: the best
reference per ROUGE type, and the mean over references as a second table)."""

from __future__ import annotations

import numpy as np

from sumtune import rouge
from sumtune.metrics.base import Column, Metric, MetricScores


class Rouge(Metric):
    name = "rouge"
    title = "ROUGE"
    columns = tuple(Column(k, True, points=True) for k in rouge.ROUGE_TYPES)

    def score(self, predictions, references, dialogues) -> MetricScores:
        s = rouge.score_multi(predictions, references)
        return self.from_multi(s)

    @staticmethod
    def from_multi(s: rouge.MultiScores) -> MetricScores:
        as_arrays = lambda rows: {k: np.array([e[k] for e in rows], dtype=np.float64) for k in rouge.ROUGE_TYPES}  # noqa: E731
        return MetricScores(as_arrays(s.best), as_arrays(s.mean_over_refs))

    @classmethod
    def protocol(cls, settings, examples, multi_reference):
        return "F-measure, stemmed (rouge_score)" + (
            "; per ROUGE type the best reference's F-measure (rouge_score's score_multi)" if multi_reference else "")
