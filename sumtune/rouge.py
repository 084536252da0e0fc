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


def score(predictions: list[str], references: list[str]) -> tuple[dict[str, float], list[dict[str, float]]]:
    """(mean F-measure per ROUGE type, per-example F-measures)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no examples to score")
    per_example = [score_pair(p, r) for p, r in zip(predictions, references)]
    means = {k: sum(e[k] for e in per_example) / len(per_example) for k in ROUGE_TYPES}
    return means, per_example
