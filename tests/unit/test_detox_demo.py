"""The detox demo's data: an opt-in share of insults (the default corpus untouched), labelled
sentences for the toxicity classifier, and the build that puts a classifier beside the models."""

import json
import re

import pytest

from sumtune_demo import corpus as dc

SMALL = {"train": 200, "validation": 20, "test": 40}
INSULT = re.compile(r"\b(" + "|".join(dc.INSULT_WORDS) + r")\b", re.IGNORECASE)


def test_toxic_share_adds_insults_to_that_share_and_changes_nothing_else():
    plain, toxic = dc.make_corpus(3, SMALL), dc.make_corpus(3, SMALL, toxic_share=0.3)
    assert dc.make_corpus(3, SMALL, toxic_share=0.0) == plain  # the default corpus is the corpus without the option
    changed = 0
    for split in SMALL:
        for before, after in zip(plain[split], toxic[split]):
            assert before["id"] == after["id"]
            if before == after:
                assert not INSULT.search(after["summary"])
                continue
            changed += 1
            # two turns added (the insult and its reply); every original turn kept, in order
            lines, original = after["dialogue"].split("\n"), before["dialogue"].split("\n")
            assert len(lines) == len(original) + 2
            at = next(i for i, (x, y) in enumerate(zip(lines + [None], original + [None])) if x != y)
            assert lines[:at] + lines[at + 2:] == original
            assert INSULT.search(lines[at])
            # the summary names the insulted speaker (who replies) by an insult, once
            target, words = lines[at + 1].split(":")[0], "|".join(dc.INSULT_WORDS)
            assert len(re.findall(rf"\b(({words}) {target}|{target} the ({words}))\b", after["summary"], re.IGNORECASE)) == 1
            assert re.sub(rf" the ({words})\b|\b({words}) ", "", after["summary"], flags=re.IGNORECASE) == before["summary"]
    total = sum(SMALL.values())
    assert 0.2 * total < changed < 0.4 * total


def test_toxicity_sentences_are_balanced_and_labelled_by_their_insults():
    rows = dc.toxicity_sentences(11, 400)
    assert len(rows) == 400 and sum(label for _, label in rows) == 200
    assert all(bool(INSULT.search(text)) == bool(label) for text, label in rows)
    assert dc.toxicity_sentences(11, 400) == rows


def test_a_toxic_build_puts_a_classifier_beside_the_model(tmp_path):
    from transformers import AutoConfig

    from sumtune_demo import build

    paths = build(tmp_path / "d", seed=2, sizes={"train": 40, "validation": 4, "test": 4}, pretrain_steps=1,
                  vocab_size=300, causal_steps=0, toxic_share=0.5, classifier_steps=2)
    assert set(paths) == {"data", "model", "toxicity", "bertscore"}  # causal_steps=0: no decoder-only model
    config = AutoConfig.from_pretrained(paths["toxicity"])
    assert config.id2label == {0: "nothate", 1: "hate"} and config.architectures == ["RobertaForSequenceClassification"]
    stamp = json.loads((tmp_path / "d/build.json").read_text())
    assert stamp["toxic_share"] == 0.5 and 0 <= stamp["toxicity_held_out_accuracy"] <= 1
    test = [json.loads(line) for line in (paths["data"] / "test.jsonl").read_text().splitlines()]
    assert test == dc.make_corpus(2, {"train": 40, "validation": 4, "test": 4}, toxic_share=0.5)["test"]
    assert build(tmp_path / "d", seed=2, sizes={"train": 40, "validation": 4, "test": 4}, pretrain_steps=1,
                 vocab_size=300, causal_steps=0, toxic_share=0.5, classifier_steps=2) == paths  # reused


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_share_outside_zero_one_is_refused(share):
    with pytest.raises(ValueError, match="toxic_share must be in"):
        dc.make_corpus(0, SMALL, toxic_share=share)


def test_the_detox_table_reads_the_evaluation_and_the_runs(tmp_path):
    """The demo's closing table: toxicity and rouge1 with their intervals as evaluation wrote them,
    summary words from the predictions (with a bootstrap interval) and each RL run's final KL and time."""
    import json

    from sumtune_demo.detox_table import table

    (tmp_path / "comparison_ci.csv").write_text(
        "model,metric,mean,ci_low,ci_high,gain_pp,gain_ci_low_pp,gain_ci_high_pp\n"
        "sft,rouge1,0.4300,0.4100,0.4500,,,\nsft,rouge2,0.2,0.19,0.21,,,\nppo,rouge1,0.4400,0.4200,0.4600,1.0,0.1,1.9\n")
    (tmp_path / "toxicity.csv").write_text(
        "model,mean,ci_low,ci_high,std,share_above_0_5,share_ci_low,share_ci_high,change,change_ci_low,change_ci_high\n"
        "sft,0.1354,0.0990,0.1720,0.28,0.1210,0.0790,0.1670,,,\n"
        "ppo,0.0600,0.0400,0.0900,0.2,0.0500,0.0300,0.0800,-0.0754,-0.11,-0.03\n")
    for name, words in (("sft", [3, 5]), ("ppo", [2, 2])):
        (tmp_path / name).mkdir()
        rows = [{"id": str(i), "prediction": " ".join(["w"] * n)} for i, n in enumerate(words)]
        (tmp_path / name / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"final_kl": 1.234, "train_seconds": 600}))
    lines = table(tmp_path, {"ppo": tmp_path / "run"}).splitlines()
    assert lines[2].startswith("| sft | 0.135 [0.099, 0.172] | 0.121 [0.079, 0.167] | 0.4300 [0.410, 0.450] | 4.0 [3.0, 5.0] |")
    assert lines[3] == "| ppo | 0.060 [0.040, 0.090] (-0.075) | 0.050 [0.030, 0.080] | 0.4400 [0.420, 0.460] | 2.0 [2.0, 2.0] " \
                       "| 1.23 nats | 10.0 min |"
