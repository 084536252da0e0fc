"""sumtune.runs.RunFolder on folders built here from one tiny T5: a LoRA and a prompt-tuning run
folder (the adapter saved by peft, the config by sumtune), a full run folder, a merged export
written by sumtune.export, the base model folder itself, and folders saved before later keys
existed."""

import dataclasses
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo  # noqa: E402

from sumtune.checkpoints import CONFIG_FILE, KEYS_ADDED_LATER  # noqa: E402
from sumtune.config import DataConfig, RunConfig, dump_yaml, from_dict  # noqa: E402
from sumtune.errors import ConfigError  # noqa: E402
from sumtune.families import FamilyError  # noqa: E402
from sumtune.families.base import ModelError  # noqa: E402
from sumtune.prompts import resolve_template  # noqa: E402
from sumtune.runs import RunFolder, training_group  # noqa: E402


def _config(name: str, base: Path, method: str, **data) -> RunConfig:
    return from_dict({"run_name": name, "model": {"name_or_path": str(base), "method": method},
                      "data": {"template": "brief", "max_source_length": 96, "chat_template": "never",
                               "system_prompt": "Summarise.", "turn_separator": " | ", **data},
                      "tracker": {"group": "grp-3"}})


def _adapter_run(folder: Path, base: Path, peft_config, method: str, seed: int) -> Path:
    """An adapter folder as training leaves it (no tokenizer: it comes from the base), with random
    trainable weights so that the adapter changes what the model computes."""
    from peft import get_peft_model
    from transformers import AutoModelForSeq2SeqLM

    model = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(base), peft_config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    model.save_pretrained(folder)
    (folder / CONFIG_FILE).write_text(dump_yaml(_config(folder.name, base, method)), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from peft import LoraConfig, PromptTuningConfig
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from sumtune.export import export

    root = tmp_path_factory.mktemp("runs")
    base = zoo.build_zoo(root / "zoo", archs=("t5",))["t5"]
    lora = _adapter_run(root / "lora", base, LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"]), "lora", 1)
    prompt = _adapter_run(root / "prompt", base, PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4),
                          "prompt", 2)
    full = root / "full"
    model = AutoModelForSeq2SeqLM.from_pretrained(base)
    with torch.no_grad():
        model.shared.weight.add_(1.0)  # a full fine-tune: weights of its own
    model.save_pretrained(full)
    AutoTokenizer.from_pretrained(base).save_pretrained(full)
    (full / CONFIG_FILE).write_text(dump_yaml(_config("full", base, "full")), encoding="utf-8")
    export(lora, root / "merged")
    return {"root": root, "base": base, "lora": lora, "prompt": prompt, "full": full, "merged": root / "merged"}


def _logits(model, vocab: int) -> torch.Tensor:
    ids = torch.arange(3, 13).remainder(vocab).unsqueeze(0)
    with torch.no_grad():
        return model(input_ids=ids, decoder_input_ids=ids[:, :4]).logits


def test_each_kind_is_told_apart_and_a_missing_folder_is_one_line(runs, tmp_path):
    kinds = {name: RunFolder(runs[name]).kind for name in ("lora", "prompt", "full", "merged", "base")}
    assert kinds == {"lora": "adapter", "prompt": "adapter", "full": "full", "merged": "merged", "base": "base"}
    assert RunFolder("google/flan-t5-base").kind == "base"  # a hub id: nothing on disk to read
    with pytest.raises(ModelError, match=f"^candidate x: {tmp_path / 'nope'} does not exist$"):
        RunFolder(tmp_path / "nope", key="candidate x").kind  # noqa: B018
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / CONFIG_FILE).write_text("run_name: u\n")
    assert RunFolder(unfinished).kind == "full" and not RunFolder(unfinished).has_model
    assert RunFolder(runs["full"]).has_model and RunFolder(runs["lora"]).has_model


def test_the_saved_config_raw_and_typed(runs, tmp_path):
    lora = RunFolder(runs["lora"])
    assert lora.saved["model"]["method"] == "lora" and lora.saved["data"]["template"] == "brief"
    assert lora.config.model.method == "lora" and lora.config.data.max_source_length == 96
    assert lora.wandb_group == "grp-3"
    base = RunFolder(runs["base"])
    assert (base.saved, base.config, base.config_file, base.wandb_group) == ({}, None, None, None)
    assert RunFolder(runs["merged"]).config.model.name_or_path == str(runs["merged"])  # export rewrote it
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / CONFIG_FILE).write_text("model: {nme: x}\n")
    with pytest.raises(ConfigError, match=f"^{broken / CONFIG_FILE}: unknown config key 'model.nme'"):
        RunFolder(broken).config  # noqa: B018
    assert training_group([tmp_path / "nope", runs["base"], runs["full"]]) == "grp-3"
    assert training_group([runs["base"]]) is None


def test_base_model_quantization_method_and_family(runs, tmp_path):
    base = str(runs["base"])
    assert RunFolder(runs["lora"]).base_model == base  # from adapter_config.json, checked against the config
    assert RunFolder(runs["full"]).base_model == base  # what the full run started from
    assert RunFolder(runs["merged"]).base_model == base  # export.json, not the config (which names the export)
    assert RunFolder(runs["base"]).base_model is None
    assert RunFolder(runs["merged"]).export_info["method"] == "lora" and RunFolder(runs["full"]).export_info == {}
    assert [RunFolder(runs[n]).method for n in ("lora", "prompt", "full", "merged", "base")] == \
        ["lora", "prompt", "full", "full", "none"]
    assert RunFolder(runs["prompt"]).adapter_method().mergeable is False
    assert RunFolder(runs["full"]).adapter_method() is None
    assert RunFolder(runs["lora"]).family().name == "seq2seq"  # an adapter: its base's family
    with pytest.raises(FamilyError, match="model.family=causal, but"):
        RunFolder(runs["full"]).family(choice="causal")
    # The quantization its base was trained in; a config edited to name another base is refused.
    edited = tmp_path / "edited"
    shutil.copytree(runs["lora"], edited)
    saved = yaml.safe_load((edited / CONFIG_FILE).read_text())
    saved["model"]["quantization"] = "8bit"
    (edited / CONFIG_FILE).write_text(yaml.safe_dump(saved))
    assert RunFolder(edited).quantization == "8bit" and RunFolder(runs["lora"]).quantization == "none"
    saved["model"]["name_or_path"] = str(runs["full"])
    (edited / CONFIG_FILE).write_text(yaml.safe_dump(saved))
    with pytest.raises(ModelError, match="names base model .* but its sumtune_config.yaml says it was trained on"):
        RunFolder(edited).base_model  # noqa: B018


def test_tokenizer_source(runs, tmp_path):
    from transformers import AutoTokenizer

    assert RunFolder(runs["lora"]).tokenizer_source == str(runs["base"])  # saved without one: the base's
    with_tok = tmp_path / "with-tok"
    shutil.copytree(runs["lora"], with_tok)
    AutoTokenizer.from_pretrained(runs["base"]).save_pretrained(with_tok)
    assert RunFolder(with_tok).tokenizer_source == str(with_tok)
    for name in ("full", "merged", "base"):
        assert RunFolder(runs[name]).tokenizer_source == str(runs[name])


def test_prompting_is_as_trained_with_the_old_behaviour_for_keys_added_later(runs, tmp_path):
    now = DataConfig(template="seed", chat_template="auto", system_prompt="Be kind.", chat_date="1 Jan 2030",
                     turn_separator=" / ", max_source_length=300)
    trained = RunFolder(runs["lora"]).prompting(now)
    assert (trained.template, trained.chat_template, trained.system_prompt, trained.turn_separator) == \
        (resolve_template("brief"), "never", "Summarise.", " | ")
    assert trained.chat_date == "26 Jul 2024" and trained.max_source_length == 300  # limits: the caller's
    assert RunFolder(runs["lora"]).prompting(now, template="{dialogue} TL;DR:").template == "{dialogue} TL;DR:"
    # A folder saved before these settings existed: prompted as sumtune prompted then, not as `now`.
    old = tmp_path / "old"
    old.mkdir()
    (old / CONFIG_FILE).write_text(yaml.safe_dump({"run_name": "old", "data": {"template": "brief"}}))
    before = RunFolder(old).prompting(now)
    assert (before.chat_template, before.system_prompt, before.chat_date, before.turn_separator) == tuple(
        KEYS_ADDED_LATER[f"data.{k}"] for k in ("chat_template", "system_prompt", "chat_date", "turn_separator"))
    assert before.system_prompt is None and before.chat_date != now.chat_date
    # A base model: the caller's settings throughout (the template's name resolved to its text).
    assert RunFolder(runs["base"]).prompting(now) == dataclasses.replace(now, template=resolve_template("seed"))


def test_a_run_prompted_otherwise_than_trained_is_refused_naming_the_key(runs):
    start = RunFolder(runs["lora"])
    same = _config("next", runs["lora"], "lora")
    start.check_prompted_as_trained(same)
    other = _config("next", runs["lora"], "lora", max_source_length=192)
    with pytest.raises(ConfigError, match=f"^config key 'data.max_source_length': the start {runs['lora']} was trained "
                                          r"with 96, this run has 192; prompt the policy as it was trained "
                                          r"\(data.max_source_length=96\)$"):
        start.check_prompted_as_trained(other)
    with pytest.raises(ConfigError, match="config key 'data.system_prompt': the start"):
        start.check_prompted_as_trained(_config("next", runs["lora"], "lora", system_prompt=None))
    RunFolder(runs["base"]).check_prompted_as_trained(other)  # nothing saved: nothing to keep


def test_load_gives_the_adapter_on_its_base_and_merge_gives_the_plain_model(runs):
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    base = AutoModelForSeq2SeqLM.from_pretrained(runs["base"]).eval()
    vocab = base.config.vocab_size
    adapter, tok = RunFolder(runs["lora"]).load()
    assert isinstance(adapter, PeftModel) and tok.pad_token_id is not None
    assert tok.name_or_path == str(runs["base"])
    merged, _ = RunFolder(runs["lora"]).load(merge=True, dropout=0.0)
    assert not isinstance(merged, PeftModel) and not any("lora" in n for n, _ in merged.named_parameters())
    assert all(m.p == 0.0 for m in merged.modules() if isinstance(m, torch.nn.Dropout))
    merged.eval()
    assert (_logits(adapter, vocab) - _logits(merged, vocab)).abs().max().item() < 1e-5
    assert (_logits(adapter, vocab) - _logits(base, vocab)).abs().max().item() > 1e-3  # the adapter matters
    exported, _ = RunFolder(runs["merged"]).load()
    assert (_logits(exported.eval(), vocab) - _logits(merged, vocab)).abs().max().item() < 1e-5
    full, full_tok = RunFolder(runs["full"]).load()
    assert torch.equal(full.shared.weight, base.shared.weight + 1.0) and full_tok.name_or_path == str(runs["full"])


def test_merging_refuses_a_quantized_base_and_a_method_that_changes_no_weight(runs):
    with pytest.raises(ConfigError, match=r"^model.quantization=8bit with a LoRA start \(.*\): its adapter is merged "
                                          "into the base, which cannot be done exactly in 8/4 bits"):
        RunFolder(runs["lora"]).load(merge=True, quantization="8bit")
    with pytest.raises(ConfigError, match="a prompt adapter cannot be merged into its base"):
        RunFolder(runs["prompt"]).load(merge=True)
