"""Credentials from the environment never reach a saved config, a printed line or the W&B config."""

import sys

import pytest
import yaml

from sumtune import tracking
from sumtune.cli import run_main
from sumtune.config import TrackerConfig, dump_yaml, load_config, redact, secret_values, to_dict
from sumtune.errors import ConfigError, SumtuneError

WANDB_KEY = "wandb-fake-0123456789abcdef0123456789abcdef"
HF_TOKEN = "hf_FakeTokenForTests0123456789"


@pytest.fixture
def secrets(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_fake_github_token_42")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("SOME_API_KEY", "short")  # under 8 characters: not treated as a secret


def test_which_environment_variables_count_as_secrets(secrets):
    found = secret_values()
    assert {"WANDB_API_KEY", "HF_TOKEN", "GITHUB_TOKEN"} <= set(found)
    assert "TOKENIZERS_PARALLELISM" not in found and "SOME_API_KEY" not in found


def test_redact_replaces_secret_values_and_secret_looking_keys(secrets):
    tree = {"group": f"exp-{HF_TOKEN}", "nested": [{"hf_token": "typed-in-by-hand", "api_key": "x" * 20}],
            "max_new_tokens": 64, "pad_token_id": 0, "tokens_per_s": 3.0, "note": "fine"}
    assert redact(tree) == {"group": "exp-***", "nested": [{"hf_token": "***", "api_key": "***"}],
                            "max_new_tokens": 64, "pad_token_id": 0, "tokens_per_s": 3.0, "note": "fine"}


def test_a_secret_pasted_into_the_config_is_refused_without_echoing_it(secrets):
    for override in (f"tracker.group={HF_TOKEN}", f"tracker.project=team-{WANDB_KEY}", f"model.lora.target_modules=[q,{HF_TOKEN}]"):
        with pytest.raises(ConfigError) as err:
            load_config(None, [override])
        line = str(err.value)
        key = override.split("=")[0]
        assert line.startswith(f"config key '{key}' holds the value of $")
        assert "credentials stay in the environment" in line
        assert HF_TOKEN not in line and WANDB_KEY not in line


def test_the_saved_config_redacts_secret_looking_keys(secrets):
    cfg = load_config(None, ["data.splits={train: train, hf_token: typed-in-by-hand}"])
    saved = yaml.safe_load(dump_yaml(cfg))
    assert saved["data"]["splits"] == {"train": "train", "hf_token": "***"}
    assert saved["train"] == to_dict(cfg)["train"]


def test_error_lines_and_printed_lines_are_redacted(secrets, capsys):
    def fails():
        raise SumtuneError(f"cannot load model '{HF_TOKEN}/x'")

    with pytest.raises(SystemExit):
        run_main(fails)

    class Acc:
        is_main_process = True

    tracking.say(Acc(), f"group {WANDB_KEY}")
    out, err = capsys.readouterr()
    assert err == "sumtune: error: cannot load model '***/x'\n"
    assert out == "[sumtune] group ***\n"


def test_wandb_gets_a_redacted_config_group_and_command_line(secrets, monkeypatch, tmp_path):
    seen = {}

    class Acc:
        log_with = ["wandb"]
        is_main_process = True

        def init_trackers(self, project, config, init_kwargs):
            seen.update(config=config, init=init_kwargs, argv=list(sys.argv))

    monkeypatch.setattr(sys, "argv", ["eval/evaluate.py", f"--candidate=x={HF_TOKEN}", "tracker.mode=offline"])
    tracking.start(Acc(), TrackerConfig(mode="offline", group=f"g-{WANDB_KEY}"), "run", tmp_path,
                   {"candidates": [f"x={HF_TOKEN}"], "extra": {"password": "hunter2hunter2"}}, job_type="eval")
    assert seen["config"] == {"candidates": ["x=***"], "extra": {"password": "***"}}
    assert seen["init"]["wandb"]["group"] == "g-***"
    assert seen["argv"] == ["eval/evaluate.py", "--candidate=x=***", "tracker.mode=offline"]
    assert HF_TOKEN not in repr(seen) and WANDB_KEY not in repr(seen)
