"""Length and abstractiveness of the summaries, no model needed.

Per example (the prediction against its dialogue; references are not used):

- ``summary_words``: whitespace-separated words of the summary (the same count as the report's
  length histograms). Not tokens: each candidate has its own tokenizer, so token counts would not
  compare across candidates; a word count is the same measure for all of them.
- ``compression_ratio``: summary words / dialogue words (lower: more compressed).
- ``novel_unigrams``, ``novel_bigrams``: the share of the summary's n-grams (each occurrence
  counts) that do not occur in the dialogue: abstractiveness (0: every n-gram copied).
- ``repeated_trigrams``: the share of the summary's trigram occurrences that repeat a trigram seen
  earlier in the same summary (degenerate repetition).

The n-gram measures read lowercased runs of letters and digits (``\\w+``): punctuation and case do
not make an n-gram novel. A summary with no n-gram of that order scores 0. Every column is
descriptive (higher_is_better None): the tables give means with intervals and paired
differences, never gains.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from sumtune.metrics.base import Column, Metric, MetricScores

_WORD = re.compile(r"\w+")


def ngram_tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def novel_share(summary: list[str], source: list[str], n: int) -> float:
    grams = ngrams(summary, n)
    if not grams:
        return 0.0
    seen = set(ngrams(source, n))
    return sum(g not in seen for g in grams) / len(grams)


def repeated_share(summary: list[str], n: int = 3) -> float:
    grams = ngrams(summary, n)
    if not grams:
        return 0.0
    return sum(c - 1 for c in Counter(grams).values()) / len(grams)


def example(summary: str, dialogue: str) -> dict[str, float]:
    words, source_words = len(summary.split()), len(dialogue.split())
    s, d = ngram_tokens(summary), ngram_tokens(dialogue)
    return {
        "summary_words": float(words),
        "compression_ratio": words / source_words if source_words else 0.0,
        "novel_unigrams": novel_share(s, d, 1),
        "novel_bigrams": novel_share(s, d, 2),
        "repeated_trigrams": repeated_share(s, 3),
    }


class Lengths(Metric):
    name = "lengths"
    title = "Length and abstractiveness"
    columns = (Column("summary_words", None, digits=2), Column("compression_ratio", None),
               Column("novel_unigrams", None), Column("novel_bigrams", None), Column("repeated_trigrams", None))

    def score(self, predictions, references, dialogues) -> MetricScores:
        rows = [example(p, d) for p, d in zip(predictions, dialogues)]
        return MetricScores({c: np.array([r[c] for r in rows], dtype=np.float64) for c in self.column_names()})

    @classmethod
    def protocol(cls, settings, examples, multi_reference):
        return ("the summary against its dialogue, no model: words (whitespace), compression = summary words / dialogue "
                "words, share of the summary's unigrams/bigrams not in the dialogue (lowercased \\w+ tokens), share "
                "of its trigrams repeated within it; descriptive (differences, not gains)")
