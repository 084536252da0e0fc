import pytest

from sumtune.config import TrackerConfig
from sumtune.tracking import log_with, wandb_mode


@pytest.fixture
def no_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))


def test_auto_without_an_api_key_is_offline(no_key):
    assert wandb_mode(TrackerConfig(mode="auto")) == "offline"
    assert log_with(TrackerConfig()) == ["wandb"]


def test_auto_with_a_key_but_no_network_is_offline(no_key, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr("sumtune.tracking._reachable", lambda *a, **k: False)
    assert wandb_mode(TrackerConfig(mode="auto")) == "offline"
    monkeypatch.setattr("sumtune.tracking._reachable", lambda *a, **k: True)
    assert wandb_mode(TrackerConfig(mode="auto")) == "online"


def test_explicit_settings_win(no_key, monkeypatch):
    assert wandb_mode(TrackerConfig(mode="online")) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(TrackerConfig(mode="auto")) == "disabled"
    assert log_with(TrackerConfig(mode="auto")) == []
    assert log_with(TrackerConfig(backend="none")) == []
