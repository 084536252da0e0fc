"""BERTScore (Zhang et al., 2020) with the ``bert-score`` package: each summary token matched to
its most similar reference token by the cosine of contextual embeddings (precision), and the
other way round (recall); F is their harmonic mean.

Settings (``eval.bertscore_*``): the model (default ``roberta-large``, bert_score's choice for
English), the layer whose output is used (default: bert_score's tuned layer for that model, 17 for
roberta-large; a model bert_score does not know, such as a local folder, needs
``eval.bertscore_num_layers``), and rescaling with bert_score's baseline files (they exist only
for the models bert_score ships baselines for, in English here; scores then spread over a wider
range but keep their order). No idf weighting (bert_score's default).

Several references per example: bert_score scores the summary against each reference and keeps,
separately for P, R and F, the maximum over the references (so P and R may come from different
references than F). sumtune calls the same functions with the model loaded once per evaluation;
each rank scores its share of the examples and every rank gets all scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sumtune.errors import ConfigError
from sumtune.metrics.base import Column, Metric, MetricScores, sharded

LANG = "en"


def _bert_score():
    try:
        import bert_score
    except ImportError:
        raise ConfigError("config key 'eval.metrics': bertscore needs the bert-score package; "
                          "pip install bert-score==0.3.13 (requirements.txt)") from None
    return bert_score


def default_layers(model: str) -> int | None:
    _bert_score()
    from bert_score.utils import model2layers

    return model2layers.get(model)


def baseline_file(model: str) -> Path:
    return Path(_bert_score().__file__).parent / "rescale_baseline" / LANG / f"{model}.tsv"


class BertScore(Metric):
    name = "bertscore"
    title = "BERTScore"
    columns = (Column("bertscore_precision", True, points=True), Column("bertscore_recall", True, points=True),
               Column("bertscore_f1", True, points=True))
    stored = True

    def __init__(self, cfg=None, accelerator=None):
        super().__init__(cfg, accelerator)
        self._model = None
        if cfg is not None:
            e = cfg.eval
            self.model_name, self.rescale, self.batch_size = e.bertscore_model, e.bertscore_rescale, e.bertscore_batch_size
            self.num_layers = e.bertscore_num_layers if e.bertscore_num_layers is not None else default_layers(self.model_name)
            check_settings(self.model_name, self.num_layers, self.rescale)

    def load(self):
        if self._model is None:
            from bert_score.utils import get_model, get_tokenizer

            try:
                self._tokenizer = get_tokenizer(self.model_name, use_fast=False)
                model = get_model(self.model_name, self.num_layers)
            except (OSError, ValueError, AssertionError) as err:
                raise ConfigError(f"config key 'eval.bertscore_model': cannot load '{self.model_name}' with "
                                   f"{self.num_layers} layers ({str(err).splitlines()[0]})") from None
            self._device = str(self.acc.device) if self.acc is not None else "cpu"
            self._model = model.to(self._device)
            self._model.requires_grad_(False)
        return self._model

    def _pairs(self, candidates: list[str], references: list[list[str]]) -> list[tuple[float, float, float]]:
        """(P, R, F) per candidate: bert_score's own computation, the maximum over references."""
        from collections import defaultdict

        import torch
        from bert_score.utils import bert_cos_score_idf

        if not candidates:
            return []
        model = self.load()
        idf = defaultdict(lambda: 1.0)
        idf[self._tokenizer.sep_token_id] = 0
        idf[self._tokenizer.cls_token_id] = 0
        flat_c = [c for c, refs in zip(candidates, references) for _ in refs]
        flat_r = [r for refs in references for r in refs]
        # An empty text: bert_score sets its raw scores to 0 (its own rule), but encoding it calls
        # build_inputs_with_special_tokens, which transformers 5's tokenizers-backed classes lack.
        # So empty pairs get their 0 here and never reach the tokenizer.
        scores = torch.zeros(len(flat_c), 3)
        full = [i for i, (c, r) in enumerate(zip(flat_c, flat_r)) if c.strip() and r.strip()]
        if full:
            with torch.inference_mode():
                scores[full] = bert_cos_score_idf(
                    model, [flat_r[i] for i in full], [flat_c[i] for i in full], self._tokenizer, idf,
                    device=self._device, batch_size=self.batch_size).cpu().float()
        out, at = [], 0
        for refs in references:
            best = scores[at:at + len(refs)].max(dim=0)[0]
            at += len(refs)
            if self.rescale:
                best = (best - self._baseline()) / (1 - self._baseline())
            out.append(tuple(float(v) for v in best))
        return out

    def _baseline(self):
        import pandas as pd
        import torch

        return torch.tensor(pd.read_csv(baseline_file(self.model_name)).iloc[self.num_layers].to_numpy()[1:], dtype=torch.float32)

    def score(self, predictions, references, dialogues) -> MetricScores:
        triples = sharded(self.acc, len(predictions),
                          lambda idx: self._pairs([predictions[i] for i in idx], [references[i] for i in idx]))
        arr = np.array(triples, dtype=np.float64).reshape(len(predictions), 3)
        return MetricScores({c.name: arr[:, j] for j, c in enumerate(self.columns)})

    def settings(self):
        return {"model": self.model_name, "num_layers": self.num_layers, "rescaled": bool(self.rescale), "idf": False}

    @classmethod
    def protocol(cls, settings, examples, multi_reference):
        kinds = sorted({f"{s.get('model', '?')}, layer {s.get('num_layers', '?')}, "
                        + ("rescaled with bert_score's baseline" if s.get("rescaled") else "not rescaled")
                        for s in settings})
        text = f"bert-score {', '.join(kinds) or '(settings not recorded)'}, no idf"
        if multi_reference:
            text += "; several references: the maximum over references, separately for P, R and F"
        return text


def check_settings(model: str, num_layers: int | None, rescale: bool) -> None:
    if num_layers is None:
        raise ConfigError(f"config key 'eval.bertscore_num_layers': bert_score has no default layer for "
                           f"'{model}'; give the layer to use, e.g. eval.bertscore_num_layers=2")
    if rescale and not baseline_file(model).is_file():
        raise ConfigError(f"config key 'eval.bertscore_rescale': bert_score has no rescaling baseline for '{model}' "
                           f"({LANG}); set eval.bertscore_rescale=false or use a model it ships a baseline for "
                           "(e.g. roberta-large)")
