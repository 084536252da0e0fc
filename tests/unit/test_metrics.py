"""The metric registry: config lines, lengths by hand, BERTScore against a direct bert_score.score
call (a tiny local encoder, no hub), comparison tables with the new columns, old result folders,
and validation selecting best/ by any metric column."""

import csv
import io
import json

import numpy as np
import pytest

from sumtune import compare, metrics
from sumtune.config import from_dict, load_config
from sumtune.errors import ConfigError
from sumtune.metrics import lengths

# ----------------------------------------------------------------------------- registry and config


def test_registry_entries_and_defaults():
    assert list(metrics.REGISTRY) == ["rouge", "bertscore", "lengths", "toxicity"]
    cfg = load_config()
    assert metrics.configured(cfg.eval) == ["rouge"]  # configs without eval.metrics score as before
    cfg = from_dict({"eval": {"toxicity_model": "some/classifier"}})
    assert metrics.configured(cfg.eval) == ["rouge", "toxicity"]
    assert [c.name for c in metrics.columns_of(["bertscore", "lengths"])] == [
        "bertscore_precision", "bertscore_recall", "bertscore_f1", "summary_words", "compression_ratio",
        "novel_unigrams", "novel_bigrams", "repeated_trigrams"]
    assert metrics.column_owner("bertscore_f1", ["rouge", "bertscore"]).name == "bertscore"
    assert metrics.column_owner("bertscore_f1", ["rouge"]) is None
    cols = {c.name: c for c in metrics.columns_of(list(metrics.REGISTRY))}
    assert cols["rouge1"].gain and cols["bertscore_f1"].gain
    assert cols["toxicity"].higher_is_better is False and not cols["toxicity"].gain
    assert all(cols[k].higher_is_better is None for k in metrics.get("lengths").column_names())


@pytest.mark.parametrize("overrides, line", [
    (["eval.metrics=[rouge,bleu]"],
     "config key 'eval.metrics': unknown metric 'bleu'; known metrics: rouge, bertscore, lengths, toxicity"),
    (["eval.metrics=[lengths]"], "config key 'eval.metrics': must include rouge"),
    (["eval.metrics=[rouge,toxicity]"], "config key 'eval.metrics': toxicity needs eval.toxicity_model"),
    (["train.best_metric=bertscore_f1"],
     "config key 'train.best_metric': no configured metric provides 'bertscore_f1' (eval.metrics gives rouge1, "
     "rouge2, rougeL, rougeLsum); add bertscore to eval.metrics"),
    (["train.best_metric=meteor"], "config key 'train.best_metric': no configured metric provides 'meteor'"),
    (["eval.metrics=[rouge,lengths]", "train.best_metric=summary_words"],
     "config key 'train.best_metric_mode': 'summary_words' is descriptive (no better direction); set "
     "train.best_metric_mode=max or min"),
    (["eval.metrics=[rouge,bertscore]", "eval.bertscore_model=/some/folder"],
     "config key 'eval.bertscore_num_layers': bert_score has no default layer for '/some/folder'"),
    (["eval.metrics=[rouge,bertscore]", "eval.bertscore_model=/some/folder", "eval.bertscore_num_layers=2",
      "eval.bertscore_rescale=true"], "config key 'eval.bertscore_rescale': bert_score has no rescaling baseline"),
])
def test_config_refusals_are_one_line(overrides, line):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert str(err.value).startswith(line) and "\n" not in str(err.value)


def test_config_accepts_any_column_of_a_configured_metric():
    cfg = load_config(None, ["eval.metrics=[rouge,bertscore,lengths]", "train.best_metric=bertscore_f1"])
    assert cfg.train.best_metric == "bertscore_f1"
    load_config(None, ["eval.metrics=[rouge,lengths]", "train.best_metric=novel_bigrams", "train.best_metric_mode=max"])
    load_config(None, ["eval.toxicity_model=x/y", "train.best_metric=toxicity"])
    # roberta-large: bert_score's layer 17 by default, and it ships a rescaling baseline
    load_config(None, ["eval.metrics=[rouge,bertscore]", "eval.bertscore_rescale=true"])


# ----------------------------------------------------------------------------- lengths by hand


def test_lengths_by_hand():
    dialogue = "Anna: Will you meet Tom at the library?\nTom: Yes, at 5 pm."
    summary = "Anna will meet Tom at the library at 5 pm at the library"
    got = lengths.example(summary, dialogue)
    # words: whitespace-separated; dialogue 13 words, summary 13
    assert got["summary_words"] == 13
    assert got["compression_ratio"] == pytest.approx(13 / 13)
    # tokens (lowercased \w+): anna will meet tom at the library at 5 pm at the library; every one is in
    # the dialogue's (anna will you meet tom at the library tom yes at 5 pm)
    assert got["novel_unigrams"] == 0.0
    # bigrams of the summary (12): anna-will, will-meet, meet-tom, tom-at, at-the, the-library, library-at,
    # at-5, 5-pm, pm-at, at-the, the-library; the dialogue's: anna-will will-you you-meet meet-tom tom-at
    # at-the the-library library-tom tom-yes yes-at at-5 5-pm -> novel: will-meet, library-at, pm-at = 3 of 12
    assert got["novel_bigrams"] == pytest.approx(3 / 12)
    # trigrams (11): "at the library" occurs twice -> 1 repeat of 11
    assert got["repeated_trigrams"] == pytest.approx(1 / 11)
    short = lengths.example("Tom.", "Anna: hi")
    assert short == {"summary_words": 1, "compression_ratio": 0.5, "novel_unigrams": 1.0, "novel_bigrams": 0.0,
                     "repeated_trigrams": 0.0}
    assert lengths.example("", "Anna: hi")["summary_words"] == 0


# ----------------------------------------------------------------------------- BERTScore


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A 2-layer BERT with random weights and a word-level WordPiece vocabulary, saved locally."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("bert")
    words = ("anna tom will meet the at library pm bike buy on monday kate lost her keys park ella pick carlos up "
             "station nina kevin fly to paris saturday and").split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *".,!?0123456789abcdefghijklmnopqrstuvwxyz",
             *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt"), model_max_length=128).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    return str(folder)


PREDS = ["Anna will meet Tom at the library.", "Tom will buy a bike.", "Kate lost her keys.", "Ella will pick up Carlos.",
         "Nina and Kevin fly to Paris."]
REFS = [["Anna will meet Tom at the library at 5 pm."], ["Tom will buy a bike on Monday.", "Tom buys a bike."],
        ["Kate lost her keys at the park."], ["Ella will pick Carlos up at the station."],
        ["Nina and Kevin will fly to Paris on Saturday.", "Nina flies to Paris.", "Kevin and Nina: Paris."]]
DIALOGUES = [f"{r[0]} {r[-1]}" for r in REFS]


def _bertscore_cfg(path, layers=2, **more):
    return from_dict({"eval": {"metrics": ["rouge", "bertscore"], "bertscore_model": path,
                               "bertscore_num_layers": layers, **more}})


def test_bertscore_equals_a_direct_bert_score_call(tiny_encoder):
    import bert_score

    metric = metrics.get("bertscore")(_bertscore_cfg(tiny_encoder, bertscore_batch_size=2))
    got = metric.score(PREDS, REFS, DIALOGUES).values
    # several references: bert_score keeps the maximum over references, separately for P, R and F
    direct = bert_score.score(PREDS, REFS, model_type=tiny_encoder, num_layers=2)
    for col, want in zip(("bertscore_precision", "bertscore_recall", "bertscore_f1"), direct):
        np.testing.assert_allclose(got[col], want.numpy(), atol=1e-6)
    single = bert_score.score(PREDS, [r[0] for r in REFS], model_type=tiny_encoder, num_layers=1)
    one = metrics.get("bertscore")(_bertscore_cfg(tiny_encoder, layers=1)).score(PREDS, [[r[0]] for r in REFS], DIALOGUES)
    np.testing.assert_allclose(one.values["bertscore_f1"], single[2].numpy(), atol=1e-6)
    # the maximum over references is taken per column: F of an example is its best reference's F
    each = [bert_score.score([PREDS[4]] * 3, REFS[4], model_type=tiny_encoder, num_layers=2)[2].max().item()]
    assert got["bertscore_f1"][4] == pytest.approx(each[0], abs=1e-6)
    assert metric.settings() == {"model": tiny_encoder, "num_layers": 2, "rescaled": False, "idf": False}
    assert metric._model is not None and metric.load() is metric._model  # loaded once, kept


def test_bertscore_is_not_loaded_before_it_scores_and_scores_an_empty_summary_0(tiny_encoder):
    import bert_score

    metric = metrics.get("bertscore")(_bertscore_cfg(tiny_encoder))
    assert metric._model is None
    # bert_score's rule for an empty text is a raw score of 0; its own encoding of one fails under
    # transformers 5, so sumtune applies the rule without encoding it
    got = metric.score(["", PREDS[1], "  "], REFS[:3], DIALOGUES[:3]).values
    assert [got[c][0] for c in got] == [0.0, 0.0, 0.0] and [got[c][2] for c in got] == [0.0, 0.0, 0.0]
    direct = bert_score.score([PREDS[1]], [REFS[1]], model_type=tiny_encoder, num_layers=2)
    assert got["bertscore_f1"][1] == pytest.approx(direct[2].item(), abs=1e-6)


# ----------------------------------------------------------------------------- tables


def _result(name, preds, bert=None):
    recs = [{"id": str(i), "dialogue": d, "references": r, "prediction": p}
            for i, (p, r, d) in enumerate(zip(preds, REFS, DIALOGUES))]
    names = ["rouge", "bertscore", "lengths"] if bert is not None else ["rouge", "lengths"]
    for rec, f1 in zip(recs, bert or []):
        rec.update(bertscore_precision=f1 + 0.01, bertscore_recall=f1 - 0.01, bertscore_f1=f1)
    return compare.Result(name, recs, metrics=names, extra={"metrics": names, "metric_settings": {
        "bertscore": {"model": "tiny", "num_layers": 2, "rescaled": False, "idf": False}}})


BASE = _result("base", ["Anna: hi", "Tom: hello", "keys", "station", "Paris"], [0.5, 0.4, 0.45, 0.5, 0.42])
TUNED = _result("tuned", PREDS, [0.8, 0.7, 0.75, 0.72, 0.74])


def test_tables_hold_every_metric_column_with_intervals_and_paired_differences(tmp_path):
    c = compare.compare([BASE, TUNED], seed=0)
    assert c.metrics == ["rouge", "bertscore", "lengths"]
    rows = list(csv.DictReader(io.StringIO(compare.means_csv(c))))
    assert list(rows[0]) == ["model", "rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore_precision", "bertscore_recall",
                             "bertscore_f1", "summary_words", "compression_ratio", "novel_unigrams", "novel_bigrams",
                             "repeated_trigrams"]
    assert float(rows[1]["bertscore_f1"]) == pytest.approx(np.mean([0.8, 0.7, 0.75, 0.72, 0.74]), abs=1e-4)
    words = [len(p.split()) for p in PREDS]
    assert float(rows[1]["summary_words"]) == pytest.approx(np.mean(words), abs=1e-4)
    # the same resamples as a direct bootstrap over the examples
    ci = compare.bootstrap_ci(np.array(words, dtype=float)[:, None], seed=0)[0]
    assert c.ci["tuned"]["summary_words"] == pytest.approx(tuple(ci))
    # BERTScore: a gain in points with its paired interval; lengths: a difference, never a gain
    f1_diff = np.array([0.8, 0.7, 0.75, 0.72, 0.74]) - np.array([0.5, 0.4, 0.45, 0.5, 0.42])
    assert c.gain_pp["tuned"]["bertscore_f1"] == pytest.approx(100 * f1_diff.mean())
    lo, hi = c.gain_ci_pp["tuned"]["bertscore_f1"]
    want = 100 * compare.paired_gain_ci(f1_diff[:, None], np.zeros((5, 1)), seed=0)[0]
    assert (lo, hi) == pytest.approx(tuple(want))
    assert "summary_words" not in c.gain_pp["tuned"]
    base_words = [len(p.split()) for p in ["Anna: hi", "Tom: hello", "keys", "station", "Paris"]]
    assert c.diff["tuned"]["summary_words"] == pytest.approx(np.mean(words) - np.mean(base_words))
    long = {(r["model"], r["metric"]): r for r in csv.DictReader(io.StringIO(compare.long_csv(c)))}
    assert long[("tuned", "summary_words")]["gain_pp"] == "" and long[("tuned", "summary_words")]["better"] == ""
    assert float(long[("tuned", "summary_words")]["difference"]) == pytest.approx(c.diff["tuned"]["summary_words"], abs=1e-4)
    assert long[("tuned", "bertscore_f1")]["better"] == "higher" and long[("base", "bertscore_f1")]["gain_pp"] == ""
    assert list(csv.DictReader(io.StringIO(compare.gain_csv(c))))[0].keys() >= {"rouge1", "bertscore_f1"}
    md = compare.markdown(c)
    assert "## BERTScore (bert-score tiny, layer 2, not rescaled, no idf; several references: the maximum over " \
           "references, separately for P, R and F; [95% bootstrap CI" in md
    assert "### Length and abstractiveness: difference to `base` (candidate minus baseline" in md
    assert "### BERTScore: absolute gain over `base` (percentage points" in md
    compare.write(tmp_path, [BASE, TUNED], c)
    assert (tmp_path / "comparison_ci.csv").read_text() == compare.long_csv(c)


def test_result_folders_reload_the_same_tables(tmp_path):
    c = compare.compare([BASE, TUNED])
    for r in (BASE, TUNED):
        folder = tmp_path / r.name
        folder.mkdir()
        (folder / "predictions.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in r.records))
        (folder / "metrics.json").write_text(json.dumps(r.extra))
    again = compare.compare([compare.load_result(tmp_path / n) for n in ("base", "tuned")])
    assert again.means == c.means and again.ci == c.ci and again.diff == c.diff and again.metrics == c.metrics
    # a row that lost its stored BERTScore: one line naming the file, the line and the field
    rows = (tmp_path / "tuned" / "predictions.jsonl").read_text().splitlines()
    broken = json.loads(rows[2])
    del broken["bertscore_recall"]
    rows[2] = json.dumps(broken)
    (tmp_path / "tuned" / "predictions.jsonl").write_text("\n".join(rows) + "\n")
    from sumtune.errors import SumtuneError

    with pytest.raises(SumtuneError, match=r"predictions.jsonl line 3: field 'bertscore_recall' \(bertscore\) is missing"):
        compare.load_result(tmp_path / "tuned")


def test_old_result_folders_load_with_rouge_and_their_toxicity(tmp_path):
    """A folder written before the registry: one reference per row, toxicity per row, a
    metrics.json without 'metrics'."""
    folder = tmp_path / "old"
    folder.mkdir()
    rows = [{"id": str(i), "dialogue": d, "reference": r[0], "prediction": p, "toxicity": t}
            for i, (p, r, d, t) in enumerate(zip(PREDS, REFS, DIALOGUES, [0.9, 0.1, 0.2, 0.6, 0.3]))]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "metrics.json").write_text(json.dumps({"rouge1": 0.5, "toxicity": {"model": "m", "label": "hate",
                                                                                  "mean": 0.42}}))
    r = compare.load_result(folder)
    assert r.metrics == ["rouge", "toxicity"]
    c = compare.compare([r])
    assert c.toxicity["old"]["mean"] == pytest.approx(0.42) and c.toxicity["old"]["share_above_0_5"] == 0.4
    assert c.toxicity_source == "m (hate)"
    assert "summary_words" not in c.means["old"]


# ----------------------------------------------------------------------------- validation


def test_validation_selects_best_by_another_metrics_column(tmp_path, monkeypatch, tiny_encoder):
    from types import SimpleNamespace

    from sumtune import validation

    outputs = iter([["Tom."] * 5, PREDS, ["Tom will buy a bike on Monday and a bike on Monday and more."] * 5])
    monkeypatch.setattr(validation, "generate", lambda *a, **k: (next(outputs), None))
    saved = []
    monkeypatch.setattr(validation.checkpoints, "save_model", lambda acc, model, tok, folder, **k: saved.append(
        json.loads(k["extra_files"]["best.json"])))
    monkeypatch.setattr(validation, "prompt_encoder", lambda *a, **k: None)
    records = [{"id": str(i), "dialogue": d, "summary": r[0]} for i, (d, r) in enumerate(zip(DIALOGUES, REFS))]
    acc = SimpleNamespace(unwrap_model=lambda m: m, num_processes=1, process_index=0, device="cpu",
                          is_main_process=True)
    model = SimpleNamespace(train=lambda: None)

    cfg = from_dict({"run_name": "v", "output_dir": str(tmp_path), "eval": {"metrics": ["rouge", "lengths"]},
                     "train": {"best_metric": "summary_words", "best_metric_mode": "min"}})
    v = validation.RougeValidator(acc, None, records, cfg, None)
    words = []
    for step in (1, 2, 3):
        scores, _ = v(model, step)
        assert {"val_rouge1", "val_summary_words", "val_novel_bigrams"} <= set(scores)
        words.append(scores["val_summary_words"])
    assert words[0] < words[1] < words[2] and v.best_step == 1 and v.best == words[0]
    assert [s["step"] for s in saved] == [1] and saved[0]["mode"] == "min"

    cfg = from_dict({"run_name": "v", "output_dir": str(tmp_path), "eval": {
        "metrics": ["rouge", "bertscore"], "bertscore_model": tiny_encoder, "bertscore_num_layers": 2},
        "train": {"best_metric": "bertscore_f1"}})
    outputs = iter([["Tom."] * 5, PREDS])
    v = validation.RougeValidator(acc, None, records, cfg, None)
    assert v._scorer is None  # nothing loaded before the first validation
    first, _ = v(model, 1)
    second, _ = v(model, 2)
    assert second["val_bertscore_f1"] > first["val_bertscore_f1"] and v.best_step == 2
    assert v.summary() == {"best_step": 2, "best_val_bertscore_f1": second["val_bertscore_f1"]}

    cfg = from_dict({"run_name": "v", "output_dir": str(tmp_path)})
    outputs = iter([PREDS])
    v = validation.RougeValidator(acc, None, records, cfg, None)
    scores, _ = v(model, 1)
    assert v.owner is None and v._scorer is None and not any("bertscore" in k or "words" in k for k in scores)


def test_bertscore_rescaling_is_bert_scores(tiny_encoder, tmp_path, monkeypatch):
    """Rescaled with a baseline file (here a made-up one: the real ones are for hub models), as
    bert_score rescales with the same file."""
    import bert_score

    from sumtune.metrics import bertscore

    table = tmp_path / "tiny.tsv"
    table.write_text("LAYER,P,R,F\n0,0.1,0.2,0.3\n1,0.2,0.3,0.25\n2,0.5,0.4,0.45\n")
    monkeypatch.setattr(bertscore, "baseline_file", lambda model: table)
    metric = bertscore.BertScore(_bertscore_cfg(tiny_encoder, bertscore_rescale=True))
    got = metric.score(PREDS, REFS, DIALOGUES).values
    direct = bert_score.score(PREDS, REFS, model_type=tiny_encoder, num_layers=2, lang="en",
                              rescale_with_baseline=True, baseline_path=str(table))
    for col, want in zip(("bertscore_precision", "bertscore_recall", "bertscore_f1"), direct):
        np.testing.assert_allclose(got[col], want.numpy(), atol=1e-6)
    assert "rescaled with bert_score's baseline" in bertscore.BertScore.protocol([metric.settings()], 5, True)


def test_the_report_shows_every_metric_of_an_evaluation_folder(tmp_path):
    from sumtune.report.build import inspect_eval

    folder = tmp_path / "eval"
    c = compare.compare([BASE, TUNED])
    for r in (BASE, TUNED):
        (folder / r.name).mkdir(parents=True)
        (folder / r.name / "predictions.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in r.records))
    compare.write(folder, [BASE, TUNED], c)
    section, _ = inspect_eval(folder, "eval", tmp_path / "out")
    captions = [t.caption for t in section.tables]
    assert [x.split(" [")[0] for x in captions] == ["ROUGE F-measure", "BERTScore", "Length and abstractiveness"]
    assert "difference to base" in captions[2] and "gain over base" not in captions[2] and "gain over base" in captions[1]
    lengths_table = section.tables[2]
    assert lengths_table.columns[:2] == ["candidate", "summary_words"] and "difference summary_words" in lengths_table.columns
    tuned = lengths_table.rows[1]
    want = f"{c.means['tuned']['summary_words']:.4f} [{c.ci['tuned']['summary_words'][0]:.4f}, "
    assert tuned[0] == "tuned" and tuned[1].startswith(want)
    assert {p.path.name for p in section.pictures} >= {"rouge.png", "gain.png", "bertscore_scores.png",
                                                       "lengths_scores.png", "lengths.png"}
    rows = list(csv.DictReader((tmp_path / "out" / "eval" / "scores.csv").open()))
    written = list(csv.DictReader((folder / "comparison_ci.csv").open()))
    assert [(r["model"], r["metric"], r["mean"]) for r in rows] == [  # the main table's rows, as before
        (w["model"], w["metric"], str(float(w["mean"]))) for w in written if not w["metric"].endswith("_mean_over_refs")]


def test_evaluation_scores_toxicity_through_the_registry_as_before(zoo_build, tmp_path):
    """eval/evaluate.py's path with a classifier: toxicity per row, metrics.json's toxicity,
    toxicity.csv and the detox demo's closing table, beside ROUGE and lengths."""
    import torch
    from accelerate import Accelerator
    from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

    from sumtune import evaluation
    from sumtune.rewards import Classifier
    from sumtune_demo import detox_table

    t5 = zoo_build["t5"]
    clf_dir = tmp_path / "clf"
    tok = AutoTokenizer.from_pretrained(t5)
    tok.save_pretrained(clf_dir)
    torch.manual_seed(0)
    RobertaForSequenceClassification(RobertaConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=300, pad_token_id=tok.pad_token_id, id2label={0: "nothate", 1: "hate"},
        label2id={"nothate": 0, "hate": 1})).save_pretrained(clf_dir)
    split = tmp_path / "test.jsonl"
    split.write_text("".join(json.dumps({"id": str(i), "dialogue": d, "summary": r[0]}) + "\n"
                             for i, (d, r) in enumerate(zip(DIALOGUES, REFS))))
    cfg = from_dict({"data": {"source": "local", "files": {"test": str(split)}, "max_source_length": 96},
                     "generation": {"max_new_tokens": 8, "batch_size": 4}, "tracker": {"backend": "none"},
                     "eval": {"metrics": ["rouge", "lengths"], "toxicity_model": str(clf_dir)}})
    out = tmp_path / "eval"
    cands = [evaluation.parse_candidate(f"sft={t5}"), evaluation.parse_candidate(f"rl={t5},template=tldr")]
    c = evaluation.evaluate_candidates(cfg, cands, out, Accelerator(cpu=True))
    assert c.metrics == ["rouge", "lengths", "toxicity"]
    rows = [json.loads(line) for line in (out / "rl" / "predictions.jsonl").read_text().splitlines()]
    clf = Classifier(str(clf_dir), key="test")
    want = clf.scores([r["prediction"] for r in rows], clf.label("hate", key="test"), "probability").numpy()
    np.testing.assert_allclose([r["toxicity"] for r in rows], want, atol=1e-6)
    assert not any("summary_words" in r for r in rows)  # lengths is recomputed, not stored
    info = json.loads((out / "rl" / "metrics.json").read_text())
    assert info["toxicity"]["model"] == str(clf_dir) and info["toxicity"]["mean"] == pytest.approx(want.mean())
    assert info["toxicity"]["share_above_0_5"] == pytest.approx((want > 0.5).mean())
    tox = list(csv.DictReader((out / "toxicity.csv").open()))
    assert list(tox[0]) == ["model", "mean", "ci_low", "ci_high", "std", "share_above_0_5", "share_ci_low",
                            "share_ci_high", "change", "change_ci_low", "change_ci_high"]
    assert [r["model"] for r in tox] == ["sft", "rl"] and tox[0]["change"] == "" and tox[1]["change"] != ""
    assert float(tox[1]["mean"]) == pytest.approx(want.mean(), abs=1e-4)
    assert "summary_words" in (out / "comparison.csv").read_text().splitlines()[0]
    assert "| rl | " in detox_table.table(out, {})
    again = evaluation.run_compare(cfg, [out], tmp_path / "again", baseline="sft")
    assert again.toxicity == c.toxicity and again.means == c.means


def _byte_chars() -> list[str]:
    """The 256 characters byte-level BPE (GPT-2, RoBERTa) writes bytes as."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def test_bertscore_on_a_roberta_tokenizer_equals_bert_score(tmp_path):
    """The default model's kind (roberta-large): bert_score encodes RoBERTa tokenizers its own way
    (a prefix space); a tiny byte-level BPE RoBERTa built here takes that path offline."""
    import bert_score
    import torch
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", *_byte_chars(), "Ġt", "he", "Ġthe"])}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\nh e\nĠt he\n")
    RobertaTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=128).save_pretrained(tmp_path)
    torch.manual_seed(0)
    RobertaModel(RobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=140, pad_token_id=1)).save_pretrained(tmp_path)
    got = metrics.get("bertscore")(_bertscore_cfg(str(tmp_path))).score(PREDS, REFS, DIALOGUES).values
    direct = bert_score.score(PREDS, REFS, model_type=str(tmp_path), num_layers=2)
    for col, want in zip(("bertscore_precision", "bertscore_recall", "bertscore_f1"), direct):
        np.testing.assert_allclose(got[col], want.numpy(), atol=1e-6)
