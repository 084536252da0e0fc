import csv
import io
import json

import pytest

from sumtune.errors import SumtuneError
from sumtune.evaluation import (
    comparison_markdown,
    comparison_rows,
    gain_rows,
    headline,
    parse_candidate,
    run_score_only,
    to_csv,
)
from sumtune.generation import shard_batches

RESULTS = {
    "base": {"rouge1": 0.233, "rouge2": 0.1, "rougeL": 0.2, "rougeLsum": 0.21},
    "lora": {"rouge1": 0.408, "rouge2": 0.18, "rougeL": 0.33, "rougeLsum": 0.35},
}


def test_csv_has_the_documented_columns_and_fractions():
    rows = list(csv.DictReader(io.StringIO(to_csv(comparison_rows(RESULTS)))))
    assert list(rows[0]) == ["model", "rouge1", "rouge2", "rougeL", "rougeLsum"]
    assert [r["model"] for r in rows] == ["base", "lora"]
    assert float(rows[1]["rouge1"]) == pytest.approx(0.408)


def test_gain_is_absolute_percentage_points_over_the_baseline():
    (gain,) = gain_rows(RESULTS, "base")
    assert gain["model"] == "lora"
    assert gain["rouge1"] == pytest.approx(17.5)
    assert gain["rouge2"] == pytest.approx(8.0)
    assert headline(RESULTS, "base") == ["base 0.233 rouge1 -> lora 0.408 (+17.5 pp)"]
    md = comparison_markdown(RESULTS, "base", "test", 10)
    assert "| lora | +17.50 | +8.00 | +13.00 | +14.00 |" in md


def test_candidate_specs():
    c = parse_candidate("lora=outputs/run")
    assert (c.name, c.path, c.kind) == ("lora", "outputs/run", "base")
    for bad in ["outputs/run", "=x", "a b=x"]:
        with pytest.raises(SumtuneError):
            parse_candidate(bad)


@pytest.mark.parametrize("n, bs, world", [(10, 3, 2), (7, 2, 3), (1, 4, 2), (200, 32, 2)])
def test_generation_shards_cover_every_example_once(n, bs, world):
    lengths = [(i * 7919) % 101 for i in range(n)]
    seen = [i for rank in range(world) for batch in shard_batches(lengths, bs, rank, world) for i in batch]
    assert sorted(seen) == list(range(n))
    batches = shard_batches(lengths, bs, 0, 1)
    assert all(len(b) <= bs for b in batches)
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)  # length-sorted, longest first


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
