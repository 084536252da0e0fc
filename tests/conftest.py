import os
import sys
from pathlib import Path

import pytest

# No hub at test time: a hub name must fail at once, not retry for ~47 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread per process (this one, and every script and launch the tests start) unless the caller
# exports another count. The tests' models are tiny: a second thread gains little, and when the
# cores are busy (another process of the suite, or another session on the machine) torch's OpenMP
# team spin-waits for a descheduled thread: tests/unit/test_generation.py -k lora took 404 s with
# two threads against 35 s with one, at a load of 8 on this 2-core machine (user CPU 105 s vs 14 s).
# The launches set OMP_NUM_THREADS=1 for their workers already (tests/integration/helpers.py).
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported before this file (a plugin): the variable came too late for it
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def zoo_build(tmp_path_factory) -> dict[str, Path]:
    """Every architecture of tests/zoo.py, built once for the whole session and shared by every
    module that uses the zoo ({"llama": Path, ..., "t5": Path}; the tokenizer in its "tokenizer"
    folder beside them). Read-only: a test writes its own files under its own tmp_path."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import zoo

    return zoo.build_zoo(tmp_path_factory.mktemp("zoo"))
