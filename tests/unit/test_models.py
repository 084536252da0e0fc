"""Loading models safely: no model's own Python code runs unless the config says so, and an adapter
put on a base it was not trained on is refused in one line."""

import json
import shutil

import pytest
import yaml

from sumtune import models
from sumtune.config import RunConfig, load_config, to_dict
from sumtune.errors import SumtuneError


def tiny_t5(path, d_model=16, layers=1):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=64, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=layers,
                      num_decoder_layers=layers, num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(config).save_pretrained(path)
    return path


# ----------------------------------------------------------------------------- trust_remote_code

CUSTOM_CONFIG = '''
import os
from transformers import T5Config

if os.environ.get("SUMTUNE_TEST_MARKER"):
    open(os.environ["SUMTUNE_TEST_MARKER"], "a").write("custom code ran\\n")


class CustomT5Config(T5Config):
    model_type = "custom_t5"
'''
CUSTOM_MODEL = '''
from transformers import T5ForConditionalGeneration

from .configuration_custom import CustomT5Config


class CustomT5(T5ForConditionalGeneration):
    config_class = CustomT5Config
'''


@pytest.fixture
def custom_code_model(tmp_path, monkeypatch):
    """A model folder whose config.json asks to run the Python files shipped beside it."""
    path = tiny_t5(tmp_path / "custom")
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="custom_t5", architectures=["CustomT5"],
                  auto_map={"AutoConfig": "configuration_custom.CustomT5Config",
                            "AutoModelForSeq2SeqLM": "modeling_custom.CustomT5"})
    (path / "config.json").write_text(json.dumps(config))
    (path / "configuration_custom.py").write_text(CUSTOM_CONFIG)
    (path / "modeling_custom.py").write_text(CUSTOM_MODEL)
    marker = tmp_path / "ran.txt"
    monkeypatch.setenv("SUMTUNE_TEST_MARKER", str(marker))
    return path, marker


def test_trust_remote_code_is_off_unless_the_config_says_so():
    assert RunConfig().model.trust_remote_code is False
    assert load_config(None, ["model.trust_remote_code=true"]).model.trust_remote_code is True


def test_a_model_with_its_own_code_is_refused_by_default_and_its_code_never_runs(custom_code_model):
    path, marker = custom_code_model
    for load in (models.load_model, models.model_family, models.load_tokenizer):
        with pytest.raises(models.ModelError) as err:
            load(str(path))
        assert str(err.value) == (f"{path} ships its own Python code (auto_map in its config.json), which sumtune does not "
                                  "run unless the config says so; set model.trust_remote_code=true only if you trust it")
    assert not marker.exists()


def test_trust_remote_code_reaches_the_loader(custom_code_model):
    path, marker = custom_code_model
    model = models.load_model(str(path), trust_remote_code=True)
    assert type(model).__name__ == "CustomT5"
    assert "custom code ran" in marker.read_text()


# ----------------------------------------------------------------------------- adapters


@pytest.fixture
def adapter_run(tmp_path):
    """A LoRA run folder trained (here: initialised) on base a; b is a wider T5, c a deeper one."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSeq2SeqLM

    a, b, c = tiny_t5(tmp_path / "a"), tiny_t5(tmp_path / "b", d_model=24), tiny_t5(tmp_path / "c", layers=2)
    lora = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(a),
                          LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=4, target_modules=["q", "v", "wi", "wo"]))
    run = tmp_path / "run"
    lora.save_pretrained(run)
    cfg = to_dict(load_config(None, [f"model.name_or_path={a}"]))
    (run / "sumtune_config.yaml").write_text(yaml.safe_dump(cfg))
    return run, a, b, c


def test_an_adapter_loads_on_the_base_it_was_trained_on(adapter_run):
    run, a, _, _ = adapter_run
    model = models.load_adapter(run, str(a))
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_an_adapter_whose_recorded_bases_disagree_is_refused_naming_both(adapter_run):
    run, a, b, _ = adapter_run
    with pytest.raises(models.ModelError) as err:
        models.load_adapter(run, str(b))
    assert str(err.value) == (f"adapter {run}: adapter_config.json names base model {a} but its sumtune_config.yaml "
                              f"says it was trained on {b}; make them agree")


def test_a_base_of_another_size_is_one_line_not_a_state_dict_traceback(adapter_run):
    run, a, b, c = adapter_run
    shutil.rmtree(a)
    shutil.copytree(b, a)  # the base folder was rebuilt at another width
    with pytest.raises(models.ModelError) as err:
        models.load_adapter(run, str(a))
    assert str(err.value) == (f"adapter {run} does not fit base model {a}: layer decoder.block.0.layer.0.SelfAttention.q "
                              "takes 24 inputs in the base, 16 in the adapter; it was trained on another base: evaluate "
                              "it with the base it was trained on")
    shutil.rmtree(a)
    shutil.copytree(c, a)  # deeper: PEFT itself would load it silently, the extra layers unadapted
    with pytest.raises(models.ModelError, match=r"the base has 10 targeted layers the adapter has no weights for "
                                                r"\(e.g. decoder.block.1.layer.0.SelfAttention.q\)"):
        models.load_adapter(run, str(a))


def test_evaluation_loads_adapters_through_the_checks(adapter_run):
    from sumtune.evaluation import Candidate, load_candidate

    run, a, b, _ = adapter_run
    cfg = yaml.safe_load((run / "sumtune_config.yaml").read_text())
    cfg["model"]["name_or_path"] = str(b)
    (run / "sumtune_config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(SumtuneError, match="names base model .* but its sumtune_config.yaml says it was trained on"):
        load_candidate(Candidate("lora", str(run)), RunConfig())


def test_the_training_checks_refuse_custom_code_before_anything_is_loaded(custom_code_model):
    path, marker = custom_code_model
    with pytest.raises(models.ModelError, match="ships its own Python code"):
        models.check_model_source(str(path), trust_remote_code=False)
    models.check_model_source(str(path))  # other callers: transformers decides, with the flag passed
    models.check_model_source(str(path), trust_remote_code=True)
    assert not marker.exists()


def test_a_missing_local_path_fails_at_once_even_when_it_looks_like_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # no hub retry even when online is allowed
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    with pytest.raises(models.ModelError, match="model.name_or_path: outputs/demo-lroa does not exist"):
        models.check_model_source("outputs/demo-lroa")
    with pytest.raises(models.ModelError, match=f"{tmp_path}/nope does not exist"):
        models.check_model_source(str(tmp_path / "nope"))
    models.check_model_source("google/flan-t5-base")  # a hub id: left to the hub (no google/ folder here)
