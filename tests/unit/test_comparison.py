import csv
import io
import json

import numpy as np
import pytest

from sumtune import compare
from sumtune.errors import SumtuneError
from sumtune.evaluation import draw_shots, parse_candidate, run_score_only
from sumtune.generation import MAX_GROWTH, make_batches, shard_batches


def result(name, preds, refs):
    recs = [{"id": str(i), "dialogue": f"d{i}", "reference": r, "prediction": p} for i, (p, r) in enumerate(zip(preds, refs))]
    return compare.Result(name, recs)


REFS = ["Anna will meet Tom at the library at 5 pm.", "Tom will buy a bike on Monday.", "Kate lost her keys at the park.",
        "Ella will pick Carlos up at the station.", "Nina and Kevin will fly to Paris on Saturday."]
BASE = result("base", ["Anna: hi", "Tom: hello there", "keys", "station", "Paris"], REFS)
LORA = result("lora", ["Anna will meet Tom at the library.", "Tom will buy a bike.", "Kate lost her keys.",
                       "Ella will pick Carlos up.", "Nina will fly to Paris."], REFS)


def test_means_csv_has_the_documented_columns_fractions_and_baseline_first():
    c = compare.compare([BASE, LORA])
    rows = list(csv.DictReader(io.StringIO(compare.means_csv(c))))
    assert list(rows[0]) == ["model", "rouge1", "rouge2", "rougeL", "rougeLsum"]
    assert [r["model"] for r in rows] == ["base", "lora"]
    assert float(rows[1]["rouge1"]) == pytest.approx(LORA.means["rouge1"], abs=1e-4)
    c2 = compare.compare([BASE, LORA], baseline="lora")
    assert list(c2.means) == ["lora", "base"]


def test_gain_is_absolute_percentage_points_over_the_baseline():
    c = compare.compare([BASE, LORA])
    for k in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert c.gain_pp["lora"][k] == pytest.approx(100 * (LORA.means[k] - BASE.means[k]))
    gain = list(csv.DictReader(io.StringIO(compare.gain_csv(c))))
    assert float(gain[0]["rouge1"]) == pytest.approx(c.gain_pp["lora"]["rouge1"], abs=0.01)
    line = compare.headline(c)[0]
    assert line.startswith(f"base {BASE.means['rouge1']:.3f} rouge1 -> lora {LORA.means['rouge1']:.3f} (+")


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    small = rng.uniform(0, 1, size=(50, 1))
    large = rng.uniform(0, 1, size=(2000, 1))
    (lo_s, hi_s), = compare.bootstrap_ci(small)
    (lo_l, hi_l), = compare.bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 3  # ~ 1/sqrt(n): 40x the data, ~6x narrower
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * large.std() / np.sqrt(2000), rel=0.15)
    np.testing.assert_array_equal(compare.bootstrap_ci(small, seed=3), compare.bootstrap_ci(small, seed=3))


def test_paired_ci_tells_a_consistent_gain_from_noise():
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0, 1, size=(300, 1))
    base = difficulty
    better = difficulty + 0.02  # small but on every example
    noisy = difficulty + rng.normal(0, 0.2, size=(300, 1))  # no real gain
    (lo, hi), = compare.paired_gain_ci(better, base)
    assert lo > 0  # the paired interval sees the consistent gain...
    (lo_u, hi_u), = compare.bootstrap_ci(better)
    (lo_b, hi_b), = compare.bootstrap_ci(base)
    assert lo_u < hi_b  # ...which the two unpaired intervals, overlapping, would hide
    (lo_n, hi_n), = compare.paired_gain_ci(noisy, base)
    assert lo_n < 0 < hi_n


def test_markdown_shows_cis_and_gains():
    md = compare.markdown(compare.compare([BASE, LORA]))
    assert "95% bootstrap CI" in md and "| lora | +" in md and "[" in md


def test_candidates_scored_on_different_examples_are_refused():
    other = result("other", ["x"] * 4, REFS[:4])
    with pytest.raises(SumtuneError, match="not scored on the same examples"):
        compare.compare([BASE, other])
    with pytest.raises(SumtuneError, match="'nope' is not a candidate"):
        compare.compare([BASE, LORA], baseline="nope")


def test_report_shows_worst_and_best_and_lengths():
    worst, best = compare.extremes(LORA, 2)
    scores = [e["rougeLsum"] for e in LORA.per_example]
    assert [scores[i] for i in worst] == sorted(scores)[:2]
    assert [scores[i] for i in best] == sorted(scores, reverse=True)[:2]
    text = compare.report([BASE, LORA], n=2)
    assert "## lora: worst 2 by rougeLsum" in text and "## base: best 2 by rougeLsum" in text
    stats = compare.length_stats(BASE)
    assert stats["prediction_words_mean"] == pytest.approx(np.mean([2, 3, 1, 1, 1]))


def test_candidate_specs():
    c = parse_candidate("lora=outputs/run")
    assert (c.name, c.path, c.shots, c.template) == ("lora", "outputs/run", 0, None)
    few = parse_candidate("few=demo/model,shots=3,template=brief")
    assert (few.shots, few.template) == (3, "brief")
    for bad in ["outputs/run", "=x", "a b=x", "a=x,shots=two", "a=x,temp=seed"]:
        with pytest.raises(SumtuneError):
            parse_candidate(bad)


def test_shots_are_drawn_from_the_given_train_records_deterministically():
    train = [{"id": f"train-{i}", "dialogue": "d", "summary": "s"} for i in range(50)]
    a, b = draw_shots(train, 3, seed=7), draw_shots(train, 3, seed=7)
    assert a == b and len({s["id"] for s in a}) == 3 and all(s["id"].startswith("train-") for s in a)
    with pytest.raises(SumtuneError, match="only 50 examples"):
        draw_shots(train, 51, seed=0)


@pytest.mark.parametrize("n, bs, world", [(10, 3, 2), (7, 2, 3), (1, 4, 2), (200, 32, 2)])
def test_generation_shards_cover_every_example_once(n, bs, world):
    lengths = [(i * 7919) % 101 for i in range(n)]
    seen = [i for rank in range(world) for batch in shard_batches(lengths, bs, rank, world) for i in batch]
    assert sorted(seen) == list(range(n))
    batches = shard_batches(lengths, bs, 0, 1)
    longest = max(lengths)
    assert len(batches[0]) == min(bs, n)  # the longest prompts: batch_size of them
    for b in batches:  # shorter ones: as many as fit in the first batch's token positions
        assert len(b) <= MAX_GROWTH * bs and len(b) * max(1, max(lengths[i] for i in b)) <= bs * max(1, longest)
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)  # length-sorted, longest first
    unsorted = shard_batches(lengths, bs, 0, 1, sort=False)
    assert [i for b in unsorted for i in b] == list(range(n)) and all(len(b) <= bs for b in unsorted)


def test_short_prompts_share_fewer_fuller_batches():
    batches = make_batches([100] * 4 + [10] * 40, 4)
    assert [len(b) for b in batches] == [4, 32, 8]  # 4 x 100 positions; then 32 (the cap) and the rest


def test_score_only_writes_metrics_and_never_overwrites(tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"id": "1", "prediction": "Tom will come.", "reference": "Tom will come."}) + "\n"
                     + json.dumps({"id": "2", "prediction": "Anna.", "reference": "Kate lost keys."}) + "\n")
    means = run_score_only(preds, None)
    written = json.loads((tmp_path / "p.metrics.json").read_text())
    assert written["examples"] == 2 and written["rouge1"] == pytest.approx(means["rouge1"]) == pytest.approx(0.5)
    with pytest.raises(SumtuneError, match="already exists"):
        run_score_only(preds, None)
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"id": "1", "prediction": "x"}\n')
    with pytest.raises(SumtuneError, match="line 1: field 'reference' is missing"):
        run_score_only(broken, None)


def test_evaluation_joins_the_wandb_group_of_its_first_trained_candidate(tmp_path):
    from sumtune.evaluation import Candidate, trained_group

    run = tmp_path / "run"
    run.mkdir()
    (run / "sumtune_config.yaml").write_text("run_name: my-run\ntracker: {group: null}\n")
    base = Candidate("base", str(tmp_path / "no-such-model"))
    assert trained_group([base]) is None
    assert trained_group([base, Candidate("lora", str(run))]) == "my-run"
    (run / "sumtune_config.yaml").write_text("run_name: my-run\ntracker: {group: exp-1}\n")
    assert trained_group([base, Candidate("lora", str(run))]) == "exp-1"
