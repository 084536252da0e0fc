"""A disk that fills up during a checkpoint save: one line, and the previous checkpoint survives.
(tests/integration/test_bad_input.py fills a real, small filesystem; this covers every way the
libraries report it, with the save made to fail.)"""

import errno
import json

import pytest

from sumtune import checkpoints
from sumtune.config import load_config
from sumtune.errors import DiskFullError, is_disk_full


class FakeAccelerator:
    is_main_process = True

    def __init__(self, fail_with=None):
        self.fail_with = fail_with

    def wait_for_everyone(self):
        pass

    def save_state(self, folder, safe_serialization=True):
        from pathlib import Path

        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"weights")
        if self.fail_with:
            (Path(folder) / "optimizer.bin").write_bytes(b"half")
            raise self.fail_with


def safetensors_error():
    from safetensors import SafetensorError

    return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("make_error", [
    lambda: OSError(errno.ENOSPC, "No space left on device"),
    safetensors_error,
    lambda: RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),  # torch.save's way
])
def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, make_error):
    cfg = load_config(None, [f"output_dir={tmp_path}", "run_name=r", "train.checkpoint_every=10", "train.log_every=10"])
    first = checkpoints.save_checkpoint(FakeAccelerator(), cfg, 10, {"position": {"step": 10}})
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    # torch.save's error carries no errno: the free space where the checkpoint goes decides.
    monkeypatch.setattr("shutil.disk_usage", lambda path: type("U", (), {"free": 4096})())
    with pytest.raises(DiskFullError) as err:
        checkpoints.save_checkpoint(FakeAccelerator(fail_with=make_error()), cfg, 20, {"position": {"step": 20}})
    line = str(err.value)
    assert "\n" not in line
    assert line == (f"no space left on device while saving checkpoint {first.parent / 'step-000020.tmp'} (incomplete: "
                    f"resume=auto never picks it); newest complete checkpoint: {first}; free space and start again "
                    "with resume=auto")
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before  # the previous checkpoint is whole
    assert checkpoints.complete_checkpoints(cfg.run_dir) == [first]  # the half-written one never counts
    assert not (first.parent / "step-000020").exists()
    assert checkpoints.find_resume_checkpoint(load_config(None, [f"output_dir={tmp_path}", "run_name=r",
                                                                 "resume=auto"])) == first
    assert json.loads((first / checkpoints.STATE_FILE).read_text())["step"] == 10


def test_other_errors_are_not_mistaken_for_a_full_disk(tmp_path):
    assert not is_disk_full(RuntimeError("CUDA out of memory"), tmp_path)  # plenty of space here
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"), tmp_path)
    cfg = load_config(None, [f"output_dir={tmp_path}", "run_name=r"])
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        checkpoints.save_checkpoint(FakeAccelerator(fail_with=RuntimeError("CUDA out of memory")), cfg, 1, {})


@pytest.mark.parametrize("make_error, where", [
    (lambda: OSError(errno.ENOSPC, "No space left on device", "outputs/r/metrics.json"), " writing outputs/r/metrics.json"),
    (safetensors_error, ""),
])
def test_a_full_disk_anywhere_else_is_one_line_too(capsys, make_error, where):
    from sumtune.cli import run_main

    def save():
        raise make_error()

    with pytest.raises(SystemExit) as exit_:
        run_main(save)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (f"sumtune: error: no space left on device{where}; free some space and start again "
                                       "(training: resume=auto continues from the newest complete checkpoint)\n")


def test_a_rank_that_only_lost_its_peer_exits_quietly(capsys, monkeypatch):
    from sumtune.cli import run_main

    def barrier():
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:7093")

    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exit_:
        run_main(barrier)
    assert exit_.value.code == 1 and capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")  # rank 0 never hides it
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        run_main(barrier)
