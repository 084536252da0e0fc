"""Multi-reference evaluation: a split holding each dialogue under several rows (DialogSum's hub
test split: ids test_<i>_1..3, one reference each) is generated once per dialogue and scored
against all its references, as rouge_score's score_multi scores it; intervals resample dialogues."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from rouge_score import rouge_scorer

from sumtune import compare, data, rouge
from sumtune.config import from_dict
from sumtune.errors import SumtuneError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo  # noqa: E402

N = 5  # dialogues, 3 references each


def dialogsum_rows(n: int = N) -> list[dict]:
    """DialogSum's hub test layout: columns id, dialogue, summary, topic; each dialogue three times."""
    rows = []
    for i, base in enumerate(zoo.corpus_rows(n, seed=11)):
        refs = [base["summary"], f"{base['summary']} They agree.", "Someone talks about plans."]
        for k, ref in enumerate(refs, start=1):
            rows.append({"id": f"test_{i}_{k}", "dialogue": base["dialogue"], "summary": ref, "topic": "plans"})
    return rows


def direct(prediction: str, references: list[str]) -> tuple[dict, dict]:
    """rouge_score itself: score_multi (the best reference per type) and the mean of score()."""
    scorer = rouge_scorer.RougeScorer(list(rouge.ROUGE_TYPES), use_stemmer=True)
    pred = rouge.sentences_per_line(prediction)
    refs = [rouge.sentences_per_line(r) for r in references]
    best = {k: v.fmeasure for k, v in scorer.score_multi(refs, pred).items()}
    each = [scorer.score(r, pred) for r in refs]
    mean = {k: float(np.mean([s[k].fmeasure for s in each])) for k in rouge.ROUGE_TYPES}
    return best, mean


def test_rows_of_one_dialogue_become_one_example_with_all_its_references():
    rows = [{"id": r["id"], "dialogue": r["dialogue"], "summary": r["summary"]} for r in dialogsum_rows(3)]
    examples = data.group_references(rows)
    assert [e["id"] for e in examples] == ["test_0", "test_1", "test_2"]
    assert [len(e["references"]) for e in examples] == [3, 3, 3]
    assert examples[1]["ids"] == ["test_1_1", "test_1_2", "test_1_3"]
    assert examples[1]["references"] == [r["summary"] for r in rows[3:6]]
    # The same text under ids without a shared stem: the first row's id; a dialogue seen once keeps its own.
    plain = [{"id": "a", "dialogue": "x", "summary": "1"}, {"id": "b", "dialogue": "y", "summary": "2"},
             {"id": "c", "dialogue": "x", "summary": "3"}]
    assert [(e["id"], e["references"]) for e in data.group_references(plain)] == [("a", ["1", "3"]), ("b", ["2"])]
    # "rows" keeps every row an example of its own.
    assert len(data.scoring_examples(rows, "rows")) == 9 and len(data.scoring_examples(rows, "grouped")) == 3


def test_line_ends_and_edge_whitespace_do_not_split_a_dialogue(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": "test_0_1", "dialogue": "A: hi\r\nB: yo", "summary": " A greets B.\n"},
        {"id": "test_0_2", "dialogue": "A: hi\nB: yo ", "summary": "B answers."},
    ]) + "\n")
    cfg = from_dict({"data": {"source": "local", "files": {"test": str(path)}}}).data
    records, stats = data.load_split(cfg, "test")
    assert records[0]["summary"] == "A greets B." and records[0]["dialogue"] == records[1]["dialogue"] == "A: hi\nB: yo"
    assert (stats.line_ends, stats.edge_whitespace) == (1, 2)
    assert "1 with \\r\\n or \\r line ends made \\n" in stats.describe_normalised()
    assert [e["references"] for e in data.group_references(records)] == [["A greets B.", "B answers."]]


def test_score_multi_is_rouge_scores_score_multi():
    preds = ["Anna will meet Tom at 5. They agree.", "Nothing in common", "Kate lost her keys."]
    refs = [["Anna meets Tom at five.", "Anna will meet Tom.", "They agree on 5."], ["Tom buys a bike."],
            ["Kate lost her keys.", "Kate cannot find her keys. She is sad."]]
    scores = rouge.score_multi(preds, refs)
    for i, (p, r) in enumerate(zip(preds, refs)):
        best, mean = direct(p, r)
        for k in rouge.ROUGE_TYPES:
            assert abs(scores.best[i][k] - best[k]) < 1e-9 and abs(scores.mean_over_refs[i][k] - mean[k]) < 1e-9
    parallel = rouge.score_multi(preds * 3, refs * 3, workers=2)
    assert parallel.best == scores.best * 3 and parallel.mean_over_refs == scores.mean_over_refs * 3


@pytest.fixture(scope="module")
def t5(zoo_build):
    return zoo_build["t5"]


def test_dialogsum_layout_generates_each_dialogue_once_and_scores_it_against_all_references(t5, tmp_path):
    from accelerate import Accelerator

    from sumtune import evaluation

    rows = dialogsum_rows()
    split = tmp_path / "test.jsonl"
    split.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = from_dict({"data": {"source": "local", "files": {"test": str(split)}, "max_source_length": 128},
                     "generation": {"max_new_tokens": 12, "batch_size": 4}, "tracker": {"backend": "none"}})
    out = tmp_path / "eval"
    cands = [evaluation.parse_candidate(f"a={t5}"), evaluation.parse_candidate(f"b={t5},template=tldr")]
    comparison = evaluation.evaluate_candidates(cfg, cands, out, Accelerator(cpu=True))

    preds = [json.loads(line) for line in (out / "a" / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == [f"test_{i}" for i in range(N)]  # N predictions, not 3N
    assert all(len(p["references"]) == 3 and p["row_ids"] == [f"{p['id']}_{k}" for k in (1, 2, 3)] for p in preds)
    metrics = json.loads((out / "a" / "metrics.json").read_text())
    assert (metrics["examples"], metrics["rows"], metrics["references"]) == (N, 3 * N, 3 * N)
    by_hand = [direct(p["prediction"], p["references"]) for p in preds]
    for k in rouge.ROUGE_TYPES:
        best = float(np.mean([b[k] for b, _ in by_hand]))
        mean = float(np.mean([m[k] for _, m in by_hand]))
        assert abs(metrics[k] - best) < 1e-9 and abs(comparison.means["a"][k] - best) < 1e-9
        assert abs(metrics["mean_over_references"][k] - mean) < 1e-9
        assert abs(comparison.over_refs.means["a"][k] - mean) < 1e-9
        assert best >= mean
    # Intervals resample the N dialogues, not the 3N rows.
    result = compare.load_result(out / "a")
    assert result.matrix().shape == (N, 4)
    ci = compare.bootstrap_ci(result.matrix(), seed=cfg.train.seed)
    assert comparison.ci["a"]["rouge1"] == pytest.approx(tuple(ci[0]))
    md = (out / "comparison.md").read_text()
    assert f"({N} dialogues, {3 * N} references; multi-reference score)" in md
    assert "rouge_score's score_multi" in md and "resamples of the dialogues" in md and "## Mean over references" in md
    ci_rows = (out / "comparison_ci.csv").read_text()
    assert "a,rouge1_mean_over_refs," in ci_rows and "b,rougeLsum_mean_over_refs," in ci_rows

    # eval/compare.py rebuilds the same tables from the folders.
    again = evaluation.run_compare(cfg, [out], tmp_path / "again", baseline="a")
    assert again.means == comparison.means and again.over_refs.means == comparison.over_refs.means


def test_rows_mode_scores_every_row(t5, tmp_path):
    from accelerate import Accelerator

    from sumtune import evaluation

    split = tmp_path / "test.jsonl"
    split.write_text("".join(json.dumps(r) + "\n" for r in dialogsum_rows(2)))
    cfg = from_dict({"data": {"source": "local", "files": {"test": str(split)}, "max_source_length": 128},
                     "eval": {"references": "rows"}, "generation": {"max_new_tokens": 8}, "tracker": {"backend": "none"}})
    c = evaluation.evaluate_candidates(cfg, [evaluation.parse_candidate(f"a={t5}")], tmp_path / "e", Accelerator(cpu=True))
    assert c.examples == 6 and c.over_refs is None
    assert "multi-reference" not in (tmp_path / "e" / "comparison.md").read_text()
    # Every dialogue has 3 references: the row-by-row mean is the grouped mean over references.
    grouped = evaluation.evaluate_candidates(dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, references="grouped")),
                                             [evaluation.parse_candidate(f"a={t5}")], tmp_path / "g", Accelerator(cpu=True))
    for k in rouge.ROUGE_TYPES:
        assert abs(grouped.over_refs.means["a"][k] - c.means["a"][k]) < 1e-9


def test_old_result_folders_with_one_reference_per_row_still_load(tmp_path):
    from sumtune import evaluation

    rows = [{"id": "1", "dialogue": "d", "reference": "Tom will come at 5.", "prediction": "Tom comes at 5."},
            {"id": "2", "dialogue": "e", "reference": "Kate lost her keys.", "prediction": "Kate lost keys."}]
    for name in ("old", "new"):
        (tmp_path / name).mkdir()
    (tmp_path / "old" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    new = [{"id": r["id"], "dialogue": r["dialogue"], "references": [r["reference"]], "prediction": r["prediction"]}
           for r in rows]
    (tmp_path / "new" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in new))
    cfg = from_dict({"tracker": {"backend": "none"}})
    c = evaluation.run_compare(cfg, [tmp_path / "old", tmp_path / "new"], tmp_path / "out", baseline="old")
    assert c.means["old"] == c.means["new"] and c.over_refs is None
    assert c.means["old"]["rouge1"] == pytest.approx(rouge.score([r["prediction"] for r in rows],
                                                                 [r["reference"] for r in rows])[0]["rouge1"])
    # A multi-reference file for --score-only, and a broken one named in one line.
    multi = tmp_path / "multi.jsonl"
    multi.write_text(json.dumps({"id": "1", "prediction": "Tom comes.", "references": ["Tom comes.", "Ann goes."]}) + "\n")
    means, n = evaluation.score_file(multi)
    assert n == 1 and means["rouge1"] == pytest.approx(1.0) and means["rouge1_mean_over_refs"] < 1.0
    multi.write_text(json.dumps({"id": "1", "prediction": "x", "references": []}) + "\n")
    with pytest.raises(SumtuneError, match="line 1: field 'references' must be a non-empty list"):
        evaluation.score_file(multi)


def test_candidates_scored_against_different_references_are_refused():
    one = compare.Result("a", [{"id": "1", "references": ["x y", "z"], "prediction": "x"}])
    two = compare.Result("b", [{"id": "1", "reference": "x y", "prediction": "x"}])
    with pytest.raises(SumtuneError, match="different references"):
        compare.compare([one, two])


def test_rouge_during_training_scores_a_multi_reference_validation_split_per_dialogue(t5, tmp_path):
    from accelerate import Accelerator

    from sumtune import families, models
    from sumtune.validation import RougeValidator

    rows = [{"id": r["id"], "dialogue": r["dialogue"], "summary": r["summary"]} for r in dialogsum_rows(4)]
    cfg = from_dict({"output_dir": str(tmp_path), "train": {"rouge_every": 1, "rouge_examples": 3},
                     "data": {"max_source_length": 128}, "generation": {"max_new_tokens": 10}})
    model = models.load_model(str(t5))
    tok = models.load_tokenizer(str(t5))
    validator = RougeValidator(Accelerator(cpu=True), tok, rows, cfg, families.of_model(model))
    assert [r["id"] for r in validator.records] == ["test_0", "test_1", "test_2"]  # rouge_examples counts dialogues
    scores, _ = validator(model, step=1)
    from sumtune.generation import generate

    preds, _ = generate(Accelerator(cpu=True), model, tok, validator.encoder, [r["dialogue"] for r in validator.records],
                        cfg.generation, progress=False)
    for k in rouge.ROUGE_TYPES:
        best = np.mean([direct(p, r["references"])[0][k] for p, r in zip(preds, validator.records)])
        assert abs(scores[f"val_{k}"] - best) < 1e-9
    assert json.loads((tmp_path / "run" / "best" / "best.json").read_text())["examples"] == 3
