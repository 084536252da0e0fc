"""ROUGE as the field reports it: rouge_score with stemming, F-measure, mean over examples.

rougeLsum is the summary-level LCS over sentences; rouge_score finds the sentences by newlines,
so each text is put one sentence per line first (by a regex: nltk's splitter would need a
download that is not possible offline).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# A sentence ends at . ! or ? followed by whitespace (the text's own newlines also split).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences_per_line(text: str) -> str:
    parts = []
    for line in text.strip().splitlines():
        parts.extend(s for s in _SENTENCE_END.split(line.strip()) if s)
    return "\n".join(parts)


_SCORER = None


def _scorer():
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    return _SCORER


def score_pair(prediction: str, reference: str) -> dict[str, float]:
    """F-measures for one example."""
    scores = _scorer().score(sentences_per_line(reference), sentences_per_line(prediction))
    return {k: scores[k].fmeasure for k in ROUGE_TYPES}


# Below this many pairs a pool costs more to start than it saves (measured by bench/run.py).
PARALLEL_MIN_PAIRS = 400


def _score_chunk(pairs: list[tuple[str, str]]) -> list[dict[str, float]]:
    return [score_pair(p, r) for p, r in pairs]


def _workers(requested: int | None, pairs: int) -> int:
    import os

    if requested is not None and requested > 0:
        return requested
    if requested == 0 or pairs < PARALLEL_MIN_PAIRS:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # Every rank of a launch scores: the node's cores are shared among its ranks.
    return max(1, min(8, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))))


def score(predictions: list[str], references: list[str], workers: int | None = None
          ) -> tuple[dict[str, float], list[dict[str, float]]]:
    """(mean F-measure per ROUGE type, per-example F-measures).

    ``workers``: processes to score with; None picks one per available core (up to 8, shared
    among the ranks of a launch) for PARALLEL_MIN_PAIRS pairs or more; 0 or 1 scores in this
    process. The scores do not depend on it.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    multi = score_multi(predictions, [[r] for r in references], workers)
    return multi.means, multi.best


@dataclass
class MultiScores:
    """Scores of predictions against one or several references each.

    ``best``: per example, the best F-measure over its references, per ROUGE type (rouge_score's
    ``score_multi``; the multi-reference score); ``mean_over_refs``: per example, the mean over its
    references. With one reference per example both are that reference's score."""

    best: list[dict[str, float]]
    mean_over_refs: list[dict[str, float]]

    @property
    def means(self) -> dict[str, float]:
        return _mean(self.best)

    @property
    def means_over_refs(self) -> dict[str, float]:
        return _mean(self.mean_over_refs)


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(e[k] for e in rows) / len(rows) for k in ROUGE_TYPES}


def score_multi(predictions: list[str], references: list[list[str]], workers: int | None = None) -> MultiScores:
    """Each prediction against all of its references (see MultiScores); ``workers`` as in score."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
    if not predictions:
        raise ValueError("no examples to score")
    if any(not refs for refs in references):
        raise ValueError("every prediction needs at least one reference")
    pairs = [(p, r) for p, refs in zip(predictions, references) for r in refs]
    n = _workers(workers, len(pairs))
    if n == 1:
        flat = _score_chunk(pairs)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # fork: the workers need nothing but this module, and start in milliseconds (spawn would
        # re-import everything and cost more than the scoring).
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        size = -(-len(pairs) // n)
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context(method)) as pool:
            chunks = pool.map(_score_chunk, [pairs[i:i + size] for i in range(0, len(pairs), size)])
            flat = [row for chunk in chunks for row in chunk]
    best, mean = [], []
    at = 0
    for refs in references:
        mine, at = flat[at:at + len(refs)], at + len(refs)
        # Per ROUGE type, the reference with the highest F-measure, as rouge_score's score_multi picks it.
        best.append({k: max(s[k] for s in mine) for k in ROUGE_TYPES})
        mean.append({k: sum(s[k] for s in mine) / len(mine) for k in ROUGE_TYPES})
    return MultiScores(best, mean)
