"""The test-only fault hook (sumtune.faults): inert when unset, and a kill exactly where it is named."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from sumtune import faults


def test_inert_and_free_when_unset(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.point("save", 6)
    with faults.during("rouge", 4):
        pass
    faults.arm()
    assert not faults._armed


def test_a_misspelt_spec_fails_loudly(monkeypatch):
    for bad in ("safe:6", "save", "save:six", "save:6@x"):
        monkeypatch.setenv(faults.ENV, bad)
        with pytest.raises(ValueError, match="KIND:STEP"):
            faults.point("save", 6)


def test_matches_kind_step_and_rank(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv(faults.ENV, "save:6@1")
    assert faults.matches("save", 6) and not faults.matches("save", 4) and not faults.matches("step", 6)
    monkeypatch.setenv(faults.ENV, "save:6@0")
    assert not faults.matches("save", 6)
    monkeypatch.setenv(faults.ENV, "save-pause:*")
    assert faults.matches("save-pause", 3) and not faults.matches("save", 3)


TRAIN = textwrap.dedent("""
    import torch
    from sumtune import faults

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, x, labels=None):
            return self.lin(x)

    faults.arm()
    net = Net()
    opt = torch.optim.AdamW(net.parameters())
    for step in range(1, 6):
        net.train()
        net(torch.ones(1, 2)).sum().backward()
        opt.step()
        print("step", step, flush=True)
        net.eval()
        net(torch.ones(1, 2), labels=torch.ones(1))
        print("val", step, flush=True)
        with faults.during("rouge", step, calls=3):  # Linear, Net, then Linear again
            net(torch.ones(1, 2))
            print("generating", step, flush=True)
            net(torch.ones(1, 2))
        print("rouge", step, flush=True)
""")


@pytest.mark.parametrize("spec, last_line", [
    ("step:3", "rouge 2"),  # killed inside step 3, after the optimizer update
    ("val:2", "step 2"),  # killed during the validation pass after step 2
    ("rouge:4", "generating 4"),  # killed midway through the block, at its 3rd module call
])
def test_kills_the_process_exactly_there(spec, last_line, tmp_path):
    env = {**os.environ, faults.ENV: spec, "SUMTUNE_PID_DIR": str(tmp_path), "RANK": "0"}
    proc = subprocess.run([sys.executable, "-c", TRAIN], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.splitlines()[-1] == last_line
    kind, step = spec.split(":")
    assert (tmp_path / f"fault-{kind}-{step}.rank0").is_file()  # the marker the integration tests wait for
