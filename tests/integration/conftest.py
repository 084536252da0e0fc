"""Integration tests: real `accelerate launch` with two CPU processes on a small demo build."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """A small demo build: same code path as `make demo`, fewer rows and pre-training steps."""
    from sumtune_demo import build

    out = tmp_path_factory.mktemp("demo")
    paths = build(out, seed=1, sizes={"train": 160, "validation": 24, "test": 30}, pretrain_steps=8, vocab_size=400)
    return paths



@pytest.fixture(scope="module", autouse=True)
def _no_run_outlives_its_module():
    yield
    from helpers import end_pools

    end_pools()
