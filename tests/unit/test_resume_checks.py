"""Which config changes a resume accepts."""

import pytest
import yaml

from sumtune import checkpoints
from sumtune.config import RunConfig, dump_yaml, load_config
from sumtune.errors import SumtuneError


def saved_checkpoint(tmp_path, cfg: RunConfig, drop: tuple[str, ...] = ()):
    folder = tmp_path / "step-000004"
    folder.mkdir()
    values = yaml.safe_load(dump_yaml(cfg))
    for key in drop:
        section, name = key.split(".")
        del values[section][name]
    (folder / checkpoints.CONFIG_FILE).write_text(yaml.safe_dump(values), encoding="utf-8")
    return folder


def test_harmless_changes_resume_and_batch_arithmetic_changes_are_refused_by_name(tmp_path):
    folder = saved_checkpoint(tmp_path, load_config(None, ["train.lr=1e-3"]))
    checkpoints.check_resumable(load_config(None, ["train.lr=1e-3", "train.log_every=50"]), folder)
    with pytest.raises(SumtuneError, match="differs in train.grad_accum, train.per_device_batch_size"):
        checkpoints.check_resumable(
            load_config(None, ["train.lr=1e-3", "train.per_device_batch_size=4", "train.grad_accum=2"]), folder)


def test_a_checkpoint_from_before_length_grouping_resumes_only_with_random_batches(tmp_path):
    folder = saved_checkpoint(tmp_path, load_config(None, []),
                              drop=("train.batching", "train.group_size", "train.max_tokens", "train.loss",
                                    "train.chunk_size", "train.compile", "train.pad_to_multiple",
                                    "model.trust_remote_code", "model.attn_implementation"))
    with pytest.raises(SumtuneError, match="differs in train.batching"):
        checkpoints.check_resumable(load_config(None, []), folder)  # today's default groups by length
    checkpoints.check_resumable(load_config(None, ["train.batching=random"]), folder)


@pytest.mark.parametrize("grouped, batching", [(True, "grouped"), (False, "random")])
def test_a_checkpoint_that_saved_group_by_length_resumes_with_the_batching_it_meant(tmp_path, grouped, batching):
    """Checkpoints written before train.batching (2026-11-30 .. 2026-12-05) saved train.group_by_length."""
    folder = saved_checkpoint(tmp_path, load_config(None, []),
                              drop=("train.batching", "train.max_tokens", "train.loss", "train.chunk_size",
                                    "train.compile", "train.pad_to_multiple", "model.attn_implementation"))
    path = folder / checkpoints.CONFIG_FILE
    values = yaml.safe_load(path.read_text())
    values["train"]["group_by_length"] = grouped
    path.write_text(yaml.safe_dump(values))
    checkpoints.check_resumable(load_config(None, [f"train.batching={batching}"]), folder)
    other = "random" if grouped else "grouped"
    with pytest.raises(SumtuneError, match="differs in train.batching"):
        checkpoints.check_resumable(load_config(None, [f"train.batching={other}"]), folder)


def test_overwriting_a_run_removes_the_earlier_methods_model_files(tmp_path):
    """A full run over a finished LoRA run (overwrite=true) must not leave the old adapter beside the
    new weights: the folder would load as the old adapter."""
    run = tmp_path / "r"
    (run / "final").mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "metrics.json", "sumtune_config.yaml",
                 "tokenizer.json", "model-00001-of-00002.safetensors"):
        (run / name).write_text("x")
    checkpoints.clear_finished(run)
    assert sorted(p.name for p in run.iterdir()) == ["sumtune_config.yaml", "tokenizer.json"]
    # a folder sumtune did not finish (a model someone keeps there) loses no model file
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("x")
    (mine / "model.safetensors").write_text("x")
    checkpoints.clear_finished(mine)
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "model.safetensors"]
