"""Scores of summaries from a sequence classifier (a hub id or a folder): the RL recipe's reward and
the evaluation's toxicity.

    clf = Classifier("facebook/roberta-hate-speech-dynabench-r4-target", key="rl.reward.model")
    good = clf.label("nothate", key="rl.reward.label")     # by name; a name it lacks is one line
    rewards = clf.scores(summaries, good, "logit")          # the good label's logit per summary
    toxicity = clf.scores(summaries, clf.label("hate", key="eval.toxicity_label"), "probability")

The classifier reads the summary alone (not the dialogue before it), in batches, in inference mode,
on the device it was given; each rank scores its own summaries.
"""

from __future__ import annotations

import torch

from sumtune.errors import SumtuneError
from sumtune.families.base import ModelError, check_model_source, remote_code_refused


class RewardError(SumtuneError):
    """A classifier that cannot give the score asked of it."""


class Classifier:
    def __init__(self, name_or_path: str, key: str, device: torch.device | str = "cpu", batch_size: int = 64,
                 max_length: int = 128, trust_remote_code: bool = False):
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        check_model_source(name_or_path, key=key, trust_remote_code=trust_remote_code)
        try:
            config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        except OSError as err:
            raise ModelError(f"{key}: cannot load '{name_or_path}' ({str(err).splitlines()[0]})") from None
        except ValueError as err:
            raise remote_code_refused(err, name_or_path) from None
        archs = getattr(config, "architectures", None) or []
        if not any(a.endswith("ForSequenceClassification") for a in archs):
            # AutoModelForSequenceClassification would put a random head on any other model, silently.
            raise RewardError(f"{key}: {name_or_path} is not a sequence classifier (its architectures: "
                              f"{', '.join(archs) or 'none recorded'}); give a model saved as *ForSequenceClassification")
        self.name, self.key = name_or_path, key
        self.names = [str(config.id2label[i]) for i in sorted(config.id2label, key=int)]
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code).to(device).eval()
        self.model.requires_grad_(False)
        self.device, self.batch_size, self.max_length = device, batch_size, max_length

    def to(self, device) -> Classifier:
        self.model.to(device)
        self.device = device
        return self

    def label(self, name: str, key: str) -> int:
        """The index of the label called ``name`` in the classifier's id2label."""
        if name not in self.names:
            raise RewardError(f"{key}: '{name}' is not a label of {self.name}; its labels are "
                              f"{', '.join(self.names)} (id2label in its config.json)")
        return self.names.index(name)

    @torch.inference_mode()
    def logits(self, texts: list[str]) -> torch.Tensor:
        """Logits [texts, labels] (float32, on the CPU), in the order of ``texts``; scored in
        batches of similar length."""
        out = torch.zeros(len(texts), len(self.names))
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt").to(self.device)
            out[rows] = self.model(**batch).logits.float().cpu()
        return out

    def scores(self, texts: list[str], label: int, kind: str = "logit") -> torch.Tensor:
        """Per text: the logit of ``label`` (``kind="logit"``) or its softmax probability."""
        logits = self.logits(texts)
        if kind == "logit":
            return logits[:, label]
        if kind == "probability":
            return logits.softmax(-1)[:, label]
        raise ValueError(f"kind must be 'logit' or 'probability', got {kind!r}")
