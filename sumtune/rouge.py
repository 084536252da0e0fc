"""ROUGE as the field reports it: rouge_score with stemming, F-measure, mean over examples.

rougeLsum is the summary-level LCS over sentences; rouge_score finds the sentences by newlines,
so each text is put one sentence per line first (by a regex: nltk's splitter would need a
download that is not possible offline).
"""

from __future__ import annotations

import re

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
    if not predictions:
        raise ValueError("no examples to score")
    pairs = list(zip(predictions, references))
    n = _workers(workers, len(pairs))
    if n == 1:
        per_example = _score_chunk(pairs)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # fork: the workers need nothing but this module, and start in milliseconds (spawn would
        # re-import everything and cost more than the scoring).
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        size = -(-len(pairs) // n)
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context(method)) as pool:
            chunks = pool.map(_score_chunk, [pairs[i:i + size] for i in range(0, len(pairs), size)])
            per_example = [row for chunk in chunks for row in chunk]
    means = {k: sum(e[k] for e in per_example) / len(per_example) for k in ROUGE_TYPES}
    return means, per_example
