"""Toxicity in the comparison: mean, std, share above 0.5 and their bootstrap intervals, by hand;
files, markdown and re-loading from result folders; nothing changes when it is not scored."""

import csv
import io
import json

import numpy as np
import pytest

from sumtune import compare

REFS = ["Anna will meet Tom.", "Tom will buy a bike.", "Kate lost her keys.", "Ella will call Carlos."]
SFT_TOX = [0.9, 0.1, 0.8, 0.2]
RL_TOX = [0.3, 0.1, 0.05, 0.2]


def result(name, preds, toxicity=None, extra=None):
    recs = [{"id": str(i), "dialogue": f"d{i}", "reference": r, "prediction": p} for i, (p, r) in enumerate(zip(preds, REFS))]
    for rec, value in zip(recs, toxicity or []):
        rec["toxicity"] = value
    return compare.Result(name, recs, extra=extra or {})


SOURCE = {"toxicity": {"model": "demo/toxicity", "label": "hate"}}
SFT = result("sft", ["That idiot Anna will meet Tom.", "Tom will buy a bike.", "Stupid Kate lost her keys.", "Ella calls."],
             SFT_TOX, SOURCE)
RL = result("detox", ["Anna will meet Tom.", "Tom will buy a bike.", "Kate lost her keys.", "Ella calls."], RL_TOX, SOURCE)


def test_toxicity_statistics_by_hand():
    c = compare.compare([SFT, RL], seed=0)
    sft, rl = c.toxicity["sft"], c.toxicity["detox"]
    assert sft["mean"] == pytest.approx(0.5) and rl["mean"] == pytest.approx(0.1625)
    assert sft["std"] == pytest.approx(np.std(SFT_TOX, ddof=1))
    assert sft["share_above_0_5"] == 0.5 and rl["share_above_0_5"] == 0.0
    assert sft["ci"][0] <= 0.5 <= sft["ci"][1] and sft["ci"][0] >= 0.1 and sft["ci"][1] <= 0.9
    assert rl["change"] == pytest.approx(0.1625 - 0.5) and "change" not in sft
    assert rl["change_ci"][0] <= rl["change"] <= rl["change_ci"][1] <= 0  # no example got more toxic
    assert c.toxicity_source == "demo/toxicity (hate)"


def test_toxicity_files_markdown_and_reloading(tmp_path):
    c = compare.compare([SFT, RL])
    compare.write(tmp_path, [SFT, RL], c)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "toxicity.csv").read_text())))
    assert [r["model"] for r in rows] == ["sft", "detox"]
    assert float(rows[0]["mean"]) == 0.5 and float(rows[1]["share_above_0_5"]) == 0.0 and rows[0]["change"] == ""
    md = (tmp_path / "comparison.md").read_text()
    assert "## Toxicity of the summaries (demo/toxicity (hate): probability per summary" in md
    assert "| detox | 0.1625 [" in md
    # eval/compare.py rebuilds it from result folders: predictions.jsonl carries each summary's toxicity
    for r in (SFT, RL):
        folder = tmp_path / "results" / r.name
        folder.mkdir(parents=True)
        (folder / "predictions.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in r.records))
        (folder / "metrics.json").write_text(json.dumps(r.extra))
    again = compare.compare([compare.load_result(tmp_path / "results" / n) for n in ("sft", "detox")])
    assert again.toxicity == c.toxicity


def test_without_toxicity_nothing_changes(tmp_path):
    plain = [compare.Result(r.name, [{k: v for k, v in rec.items() if k != "toxicity"} for rec in r.records])
             for r in (SFT, RL)]
    c = compare.compare(plain)
    assert c.toxicity == {}
    compare.write(tmp_path, plain, c)
    assert not (tmp_path / "toxicity.csv").exists()
    assert "Toxicity" not in (tmp_path / "comparison.md").read_text()
    # only one candidate scored: no toxicity change against an unscored baseline
    c = compare.compare([plain[0], RL])
    assert list(c.toxicity) == ["detox"] and "change" not in c.toxicity["detox"]
