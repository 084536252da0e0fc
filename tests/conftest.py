import os
import sys
from pathlib import Path

import pytest

# No hub at test time: a hub name must fail at once, not retry for ~47 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def zoo_build(tmp_path_factory) -> dict[str, Path]:
    """Every architecture of tests/zoo.py, built once for the whole session and shared by every
    module that uses the zoo ({"llama": Path, ..., "t5": Path}; the tokenizer in its "tokenizer"
    folder beside them). Read-only: a test writes its own files under its own tmp_path."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import zoo

    return zoo.build_zoo(tmp_path_factory.mktemp("zoo"))
