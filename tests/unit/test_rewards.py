"""Scores from a sequence classifier (sumtune.rewards): the good label by name, logit or probability,
batching that keeps the order, and one line for each thing that cannot work."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo  # noqa: E402

from sumtune.errors import SumtuneError  # noqa: E402
from sumtune.rewards import Classifier, RewardError  # noqa: E402

TEXTS = ["Anna will meet Tom at noon.", "", "That idiot Tom will bring the cake to the party on Friday at 6 pm.", "ok"]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A tiny random RoBERTa classifier with the real detox classifier's labels."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    root = tmp_path_factory.mktemp("clf")
    tok = zoo.base_tokenizer(root)
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=160, pad_token_id=tok.pad_token_id,
                           id2label={0: "nothate", 1: "hate"}, label2id={"nothate": 0, "hate": 1})
    RobertaForSequenceClassification(config).save_pretrained(root)
    return root


def test_scores_are_the_named_labels_logit_or_probability_in_order(classifier_dir):
    clf = Classifier(str(classifier_dir), key="rl.reward.model", batch_size=2)
    assert clf.names == ["nothate", "hate"]
    good, bad = clf.label("nothate", key="rl.reward.label"), clf.label("hate", key="eval.toxicity_label")
    assert (good, bad) == (0, 1)
    logits = torch.stack([clf.model(**clf.tokenizer([t], return_tensors="pt")).logits[0] for t in TEXTS]).detach()
    assert torch.allclose(clf.scores(TEXTS, good, "logit"), logits[:, 0], atol=1e-5)
    assert torch.allclose(clf.scores(TEXTS, bad, "probability"), logits.softmax(-1)[:, 1], atol=1e-5)
    big = Classifier(str(classifier_dir), key="k", batch_size=64)
    assert torch.allclose(big.logits(TEXTS), clf.logits(TEXTS), atol=1e-5)  # batching keeps the order


def test_a_label_the_classifier_lacks_is_one_line_naming_its_labels(classifier_dir):
    clf = Classifier(str(classifier_dir), key="rl.reward.model")
    with pytest.raises(RewardError) as err:
        clf.label("not_hate", key="rl.reward.label")
    assert str(err.value) == (f"rl.reward.label: 'not_hate' is not a label of {classifier_dir}; its labels are "
                              "nothate, hate (id2label in its config.json)")


def test_a_model_that_is_no_classifier_or_is_missing_is_one_line(tmp_path):
    t5 = zoo.build_zoo(tmp_path / "zoo", archs=("t5",))["t5"]
    with pytest.raises(RewardError) as err:
        Classifier(str(t5), key="rl.reward.model")
    assert "is not a sequence classifier (its architectures: T5ForConditionalGeneration)" in str(err.value)
    with pytest.raises(SumtuneError, match="rl.reward.model: ./no/such/classifier does not exist"):
        Classifier("./no/such/classifier", key="rl.reward.model")
    with pytest.raises(SumtuneError, match="'facebook/roberta-hate-speech-dynabench-r4-target' is not a local folder, "
                                           "nor in the Hugging Face cache, and HF_HUB_OFFLINE is set"):
        Classifier("facebook/roberta-hate-speech-dynabench-r4-target", key="rl.reward.model")
