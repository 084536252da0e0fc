from pathlib import Path

import pytest

from sumtune.config import RunConfig, dump_yaml, from_dict, load_config, load_yaml
from sumtune.errors import ConfigError


def test_defaults_come_from_the_dataclasses():
    cfg = load_config()
    assert cfg == RunConfig()
    assert cfg.data.template == "seed"


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 1e-4\n  epochs: 2\nmodel:\n  method: full\n")
    cfg = load_config(path, ["train.lr=3e-4", "train.per_device_batch_size=4", "model.lora.target_modules=[q,v]"])
    assert cfg.train.lr == pytest.approx(3e-4)  # override wins over the file
    assert cfg.train.epochs == 2  # file wins over the default
    assert cfg.model.method == "full"
    assert cfg.train.per_device_batch_size == 4
    assert cfg.model.lora.target_modules == ["q", "v"]


def test_yaml_1_1_exponent_without_dot_is_a_number(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 3e-4\n")
    assert load_config(path).train.lr == pytest.approx(3e-4)


@pytest.mark.parametrize(
    "override, message",
    [
        (["train.lrr=1e-3"], "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
        (["trian.lr=1e-3"], "unknown config key 'trian' (did you mean 'train'?)"),
        (["train.epochs=three"], "config key 'train.epochs': expected int, got 'three'"),
        (["train.lr=0"], "config key 'train.lr': must be > 0"),
        (["train.lr=-1e-4"], "config key 'train.lr': must be > 0"),
        (["train.per_device_batch_size=0"], "config key 'train.per_device_batch_size': must be >= 1"),
        (["model.method=qlora"], "config key 'model.method': 'qlora' is not one of 'full', 'lora'"),
        (["train.grad_accum=1.5"], "config key 'train.grad_accum': expected int"),
        (["data.template=no placeholder"], "config key 'data.template': must contain the placeholder"),
        (["data.source=local"], "config key 'data.files': source 'local' needs files"),
        (["overwrite=yes please"], "config key 'overwrite': expected bool"),
        (["train.lr"], "override 'train.lr' must look like section.key=value"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, override)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_broken_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)


def test_resolved_config_round_trips_through_yaml(tmp_path):
    import yaml

    cfg = load_config(None, ["train.lr=5e-4", "run_name=x", "data.source=local", "data.files={train: a.jsonl}"])
    again = from_dict(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg


def test_every_train_config_in_the_repo_loads():
    files = sorted(Path("configs/train").rglob("*.yaml"))
    assert files, "no train configs found"
    for path in files:
        cfg = load_config(path)
        assert path.read_text().lstrip().startswith("#"), f"{path} must open with the command that launches it"
        assert cfg.run_name


def test_checkpoint_interval_must_keep_log_windows_aligned():
    with pytest.raises(ConfigError, match="must be a multiple of train.log_every"):
        load_config(None, ["train.checkpoint_every=5", "train.log_every=2"])
    assert load_config(None, ["train.checkpoint_every=4", "train.log_every=2"]).train.checkpoint_every == 4


def test_only_complete_checkpoints_count(tmp_path):
    from sumtune.checkpoints import complete_checkpoints

    for name, complete in [("step-000002", True), ("step-000010", True), ("step-000012.tmp", True),
                           ("step-000014", False), ("other", True)]:
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        if complete:
            (tmp_path / "checkpoints" / name / "trainer_state.json").write_text("{}")
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-000002", "step-000010"]


def test_an_unfinished_runs_checkpoints_are_not_thrown_away_silently(tmp_path):
    from sumtune.checkpoints import check_output_dir
    from sumtune.errors import SumtuneError

    (tmp_path / "r" / "checkpoints" / "step-000004").mkdir(parents=True)
    (tmp_path / "r" / "checkpoints" / "step-000004" / "trainer_state.json").write_text("{}")
    with pytest.raises(SumtuneError, match="holds checkpoints of an unfinished run; pass resume=auto"):
        check_output_dir(load_config(None, [f"output_dir={tmp_path}", "run_name=r"]))
    check_output_dir(load_config(None, [f"output_dir={tmp_path}", "run_name=r", "resume=auto"]))
    check_output_dir(load_config(None, [f"output_dir={tmp_path}", "run_name=r", "overwrite=true"]))
