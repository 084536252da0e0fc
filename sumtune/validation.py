"""ROUGE during training on a fixed validation subset; the best checkpoint is kept as best/.

The test split is never read here: only the first ``train.rouge_examples`` validation examples. A
validation split with several rows per dialogue is scored as evaluation scores it
(``eval.references``): each dialogue generated once, its score the multi-reference one.

``train.best_metric`` may name any column of a configured metric (``eval.metrics``): ROUGE is
always scored; when the column belongs to another metric (bertscore_f1, toxicity, summary_words...),
that metric is scored too, its model loaded at the first validation and kept (a run that selects by
ROUGE never loads one). Every rank generates its share and sees all predictions; a model metric
scores its share on each rank and gathers, so every rank takes the same best/ decision.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from sumtune import checkpoints, faults, metrics, rouge
from sumtune.config import RunConfig, dump_yaml
from sumtune.data import prompt_encoder, scoring_examples
from sumtune.generation import generate
from sumtune.tracking import say


class RougeValidator:
    """``validator(model, step) -> (scores, stop)``: ROUGE, plus the metric of
    ``train.best_metric`` when another metric provides it (logged as ``val_<column>``). ``extra(predictions)`` adds scores of the
    recipe's own (the RL recipe: the reward model's); ``keep_best=False`` keeps no best/ (the RL
    recipe: its final save merges the start, which a best/ adapter would lack); ``generation``
    replaces ``cfg.generation``."""

    def __init__(self, accelerator, tokenizer, val_records: list[dict], cfg: RunConfig, family,
                 extra: Callable[[list[str]], dict] | None = None, keep_best: bool = True, generation=None):
        self.acc = accelerator
        self.extra, self.keep_best = extra, keep_best
        self.generation = generation or cfg.generation
        self.tok = tokenizer
        self.cfg = cfg
        self.records = scoring_examples(val_records, cfg.eval.references)[: cfg.train.rouge_examples]
        self.encoder = prompt_encoder(family, tokenizer, cfg.data)
        self.metric = cfg.train.best_metric
        owner = metrics.column_owner(self.metric, metrics.configured(cfg.eval))
        # config validation refused a column no configured metric provides
        self.owner = owner if owner is not None and owner.name != "rouge" else None
        self._scorer = None
        column = next(c for c in (owner or metrics.get("rouge")).columns if c.name == self.metric)
        mode = cfg.train.best_metric_mode
        self.maximize = mode == "max" or mode == "auto" and column.higher_is_better is not False
        self.best = -math.inf if self.maximize else math.inf
        self.best_step: int | None = None
        self.evals_without_best = 0

    @property
    def best_dir(self) -> Path:
        return self.cfg.run_dir / "best"

    def __call__(self, model, step: int) -> tuple[dict, bool]:
        """Score the model now; save it as best/ if it beats every earlier score. Returns the
        scores to log and whether early stopping asks to stop (the same on every rank, since
        every rank sees the gathered predictions)."""
        net = self.acc.unwrap_model(model)
        with faults.during("rouge", step):  # a test hook (sumtune.faults); inert unless SUMTUNE_FAULT names it
            preds, _ = generate(self.acc, net, self.tok, self.encoder, [r["dialogue"] for r in self.records],
                                self.generation, progress=False)
        model.train()
        refs = [r["references"] for r in self.records]
        means = rouge.score_multi(preds, refs).means
        if self.owner is not None:
            if self._scorer is None:
                self._scorer = self.owner(self.cfg, self.acc)
            got = self._scorer.score(preds, refs, [r["dialogue"] for r in self.records])
            means = {**means, **{k: float(v.mean()) for k, v in got.values.items()}}
        scores = {**(self.extra(preds) if self.extra else {}), **{f"val_{k}": v for k, v in means.items()}}
        if not self.keep_best:
            say(self.acc, f"step {step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
            return scores, False
        value = means[self.metric]
        if value > self.best if self.maximize else value < self.best:
            self.best, self.best_step, self.evals_without_best = means[self.metric], step, 0
            info = {"step": step, "metric": self.metric, "mode": "max" if self.maximize else "min", **scores,
                    "examples": len(self.records)}
            # best.json and the config go in before the swap: best/ is never without them.
            checkpoints.save_model(self.acc, model, self.tok, self.best_dir, atomic=True, extra_files={
                "best.json": json.dumps(info, indent=2) + "\n",
                checkpoints.CONFIG_FILE: dump_yaml(self.cfg),
            })
        else:
            self.evals_without_best += 1
        patience = self.cfg.train.early_stopping_patience
        return scores, bool(patience and self.evals_without_best >= patience)

    def state(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "evals_without_best": self.evals_without_best}

    def restore(self, state: dict) -> None:
        self.best, self.best_step, self.evals_without_best = state["best"], state["best_step"], state["evals_without_best"]

    def summary(self) -> dict:
        return {"best_step": self.best_step, f"best_val_{self.metric}": self.best}
