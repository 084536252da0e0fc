"""Model families: the one place that knows an encoder-decoder (seq2seq) model from a decoder-only
(causal) one.

Everything that differs between them lives behind ``Family``: how a record becomes token ids for
training and for generation, collation, counting real tokens, the token loss, loading, LoRA's
default targets, precision checks and generation. The rest of the library asks the family and never
reads ``model_type`` itself.

    family = families.resolve("demo/model")            # from config.json, before any weight loads
    model = family.load("demo/model", quantization="none")
"""

from __future__ import annotations

import json
from pathlib import Path

from sumtune.errors import SumtuneError
from sumtune.families.base import Family, GenerationOutput, check_model_source, set_dropout
from sumtune.families.causal import CausalFamily
from sumtune.families.seq2seq import Seq2SeqFamily

__all__ = ["Family", "GenerationOutput", "CausalFamily", "Seq2SeqFamily", "resolve", "of_model", "set_dropout",
           "FAMILIES", "FamilyError"]

FAMILIES: dict[str, type[Family]] = {"seq2seq": Seq2SeqFamily, "causal": CausalFamily}


class FamilyError(SumtuneError):
    """A model of no family sumtune can train (an encoder-only BERT, say)."""


def _read_config(name_or_path: str, trust_remote_code: bool):
    from transformers import AutoConfig

    from sumtune.families.base import ModelError, remote_code_refused

    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ModelError(f"model.name_or_path: cannot load '{name_or_path}' ({str(err).splitlines()[0]})") from None
    except ValueError as err:
        raise remote_code_refused(err, name_or_path) from None


def kind_of_config(config) -> str | None:
    """"seq2seq", "causal" or None (neither: encoder-only, vision, ...), from a model config."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    auto_map = getattr(config, "auto_map", None) or {}  # a model that ships its own code says what it is
    if getattr(config, "is_encoder_decoder", False) or "AutoModelForSeq2SeqLM" in auto_map:
        known = config.model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES or "AutoModelForSeq2SeqLM" in auto_map
        return "seq2seq" if known else None
    if "AutoModelForCausalLM" in auto_map:
        return "causal"
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal"
    if any(a.endswith(("ForMaskedLM", "ForSequenceClassification", "Model", "ForTokenClassification")) for a in archs):
        return None
    # No architectures recorded: a decoder-only type, unless it is an encoder (BERT, RoBERTa...)
    # that transformers also lets run as a decoder.
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "causal"
    return None


def resolve(name_or_path: str, choice: str = "auto", trust_remote_code: bool = False,
            key: str = "model.name_or_path") -> Family:
    """The family of a model folder or hub id, read from its config.json (no weights are loaded).
    ``choice`` is ``model.family``: "auto" trusts the config, "seq2seq"/"causal" must agree with it."""
    check_model_source(name_or_path, key=key, trust_remote_code=trust_remote_code)
    adapter = Path(name_or_path) / "adapter_config.json"
    if adapter.is_file() and not (Path(name_or_path) / "config.json").is_file():
        base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if base:
            return resolve(base, choice, trust_remote_code, key=f"base model of adapter {name_or_path}")
    config = _read_config(name_or_path, trust_remote_code)
    found = kind_of_config(config)
    if found is None:
        raise FamilyError(
            f"{key}: {name_or_path} is a '{config.model_type}' model, which is neither an encoder-decoder (T5, BART) nor "
            "a decoder-only language model (Llama, Qwen, Mistral...): it cannot write a summary; pick one of those")
    if choice not in ("auto", found):
        raise FamilyError(f"model.family={choice}, but {name_or_path} is a {found} model ('{config.model_type}'); "
                          f"set model.family=auto or {found}")
    return FAMILIES[found](config.model_type)


def of_model(model) -> Family:
    """The family of a loaded model (a PEFT model's base counts)."""
    net = model.get_base_model() if hasattr(model, "get_base_model") else model
    net = getattr(net, "module", net)  # DDP
    config = net.config
    found = kind_of_config(config) or ("seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal")
    return FAMILIES[found](config.model_type)
