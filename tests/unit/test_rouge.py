import pytest
from rouge_score import rouge_scorer

from sumtune.rouge import ROUGE_TYPES, score, sentences_per_line

PREDS = ["Anna will meet Tom at the library. They study at 5 pm!", "Tom buys a bike.", "nothing here"]
REFS = ["Anna and Tom will meet at the library at 5 pm. Tom brings notes.", "Tom is buying bikes on Monday.", "Kate lost her keys."]


def test_sentences_go_one_per_line():
    assert sentences_per_line("Anna comes. Tom leaves!  Why? ok") == "Anna comes.\nTom leaves!\nWhy?\nok"
    assert sentences_per_line("first line\nsecond. third") == "first line\nsecond.\nthird"


def test_matches_a_direct_rouge_score_computation():
    direct = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    means, per_example = score(PREDS, REFS)
    for k in ROUGE_TYPES:
        values = [direct.score(sentences_per_line(r), sentences_per_line(p))[k].fmeasure for p, r in zip(PREDS, REFS)]
        assert means[k] == pytest.approx(sum(values) / len(values))
        assert [e[k] for e in per_example] == pytest.approx(values)
    # rouge1 is stemmed: "buying bikes" matches "buys a bike" in part
    assert per_example[1]["rouge1"] > 0.3
    assert per_example[2]["rouge1"] == 0.0


def test_rougelsum_differs_from_rougel_when_sentences_are_split():
    pred = "Tom brings notes. Anna and Tom will meet at the library."
    ref = "Anna and Tom will meet at the library. Tom brings notes."
    means, _ = score([pred], [ref])
    assert means["rougeLsum"] == pytest.approx(1.0)  # summary-level LCS over sentences
    assert means["rougeL"] < 0.9  # one LCS over the whole text


def test_identical_texts_score_one_and_lengths_must_match():
    means, _ = score(["Tom will come at 5 pm."], ["Tom will come at 5 pm."])
    assert all(v == pytest.approx(1.0) for v in means.values())
    with pytest.raises(ValueError):
        score(["a"], ["a", "b"])


def test_scoring_in_a_pool_gives_the_same_scores_in_the_same_order():
    from sumtune.rouge import score

    refs = [f"Anna will meet Tom at {h} pm. She brings the notes." for h in range(1, 13)] * 5
    preds = [f"Tom meets Anna at {h + i % 3} pm." for i, h in enumerate(range(1, 13))] * 5
    one = score(preds, refs, workers=1)
    pooled = score(preds, refs, workers=3)
    assert pooled == one
    assert len({round(e["rouge1"], 6) for e in one[1]}) > 1  # the order is checkable: not all equal


def test_the_pool_shares_the_cores_among_the_ranks_of_a_launch(monkeypatch):
    import os

    from sumtune.rouge import _workers

    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert _workers(None, 100) == 1  # small: not worth a pool
    assert _workers(None, 1000) == max(1, min(8, cores))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))
    assert _workers(None, 1000) == 1
    assert _workers(3, 10) == 3 and _workers(0, 1000) == 1
