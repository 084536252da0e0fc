"""Toxicity of each summary (the summary alone, not dialogue + summary): the probability of
``eval.toxicity_label`` from the ``eval.toxicity_model`` sequence classifier.

Columns: ``toxicity`` (the probability; lower is better) and ``toxicity_above_0_5`` (1 where it
exceeds 0.5: its mean is the share of toxic summaries). predictions.jsonl rows keep the probability
as ``toxicity`` (the indicator is derived from it), as before the registry; toxicity.csv and the
markdown section keep their columns (mean, std, share above 0.5, change over the baseline).
"""

from __future__ import annotations

import numpy as np

from sumtune.metrics.base import Column, Metric, MetricScores, sharded

TOXIC_ABOVE = 0.5


class Toxicity(Metric):
    name = "toxicity"
    title = "Toxicity of the summaries"
    columns = (Column("toxicity", False), Column("toxicity_above_0_5", False))
    stored = True

    def __init__(self, cfg=None, accelerator=None):
        super().__init__(cfg, accelerator)
        self._clf = None
        if cfg is not None:
            from sumtune.errors import SumtuneError

            if not cfg.eval.toxicity_model:
                raise SumtuneError("config key 'eval.metrics': toxicity needs eval.toxicity_model (a classifier: hub id or "
                                   "path)")

    def load(self):
        """The classifier, loaded once (on first use: one line now if it cannot work)."""
        if self._clf is None:
            from sumtune.rewards import Classifier

            e = self.cfg.eval
            device = self.acc.device if self.acc is not None else "cpu"
            self._clf = Classifier(e.toxicity_model, key="eval.toxicity_model", device=device,
                                   batch_size=e.toxicity_batch_size, trust_remote_code=self.cfg.model.trust_remote_code)
            self._label = self._clf.label(e.toxicity_label, key="eval.toxicity_label")
        return self._clf

    def score(self, predictions, references, dialogues) -> MetricScores:
        clf = self.load()
        values = sharded(self.acc, len(predictions),
                         lambda idx: clf.scores([predictions[i] for i in idx], self._label, "probability").tolist())
        return self.from_values(np.array(values, dtype=np.float64))

    @staticmethod
    def from_values(values: np.ndarray) -> MetricScores:
        return MetricScores({"toxicity": values, "toxicity_above_0_5": (values > TOXIC_ABOVE).astype(np.float64)})

    def row_fields(self, scores, i):
        return {"toxicity": float(scores.values["toxicity"][i])}

    @classmethod
    def from_records(cls, records, where):
        if not records or any(not isinstance(r.get("toxicity"), (int, float)) for r in records):
            return None
        return cls.from_values(np.array([r["toxicity"] for r in records], dtype=np.float64))

    def settings(self):
        return {"model": self.cfg.eval.toxicity_model, "label": self.cfg.eval.toxicity_label}

    @classmethod
    def protocol(cls, settings, examples, multi_reference):
        sources = sorted({f"{s['model']} ({s['label']})" for s in settings if "model" in s})
        return f"{', '.join(sources) or 'classifier'}: probability per summary, the summary alone"


def toxicity_stats(values: np.ndarray, baseline: np.ndarray | None = None, seed: int = 0) -> dict:
    """Mean, std and share above 0.5 of per-example toxicity, with 95% bootstrap intervals of the mean
    and of the share; with ``baseline`` (the same examples), the change of the mean and its paired
    interval."""
    from sumtune.compare import bootstrap_ci, paired_gain_ci

    toxic = (values > TOXIC_ABOVE).astype(np.float64)
    (lo, hi), (slo, shi) = bootstrap_ci(np.stack([values, toxic], 1), seed=seed)
    out = {"mean": float(values.mean()), "ci": (float(lo), float(hi)), "std": float(values.std(ddof=1)) if len(values) > 1
           else 0.0, "share_above_0_5": float(toxic.mean()), "share_ci": (float(slo), float(shi))}
    if baseline is not None:
        (dlo, dhi), = paired_gain_ci(values[:, None], baseline[:, None], seed=seed)
        out.update(change=float((values - baseline).mean()), change_ci=(float(dlo), float(dhi)))
    return out
