"""Fixtures several test modules opt into (none is autouse here)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Single-threaded like the reference implementations' fixtures; on a shared 2-core box also ~10x faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow (reference sweeps, LeRobot-loader round trips)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long test (minutes); runs with --runslow or EDGEDP_SLOW=1")


def pytest_collection_modifyitems(config, items):
    """Slow tests are opt-in so the default suite stays a few minutes on 2 cores."""
    import os

    if config.getoption("--runslow") or os.environ.get("EDGEDP_SLOW") == "1":
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow or EDGEDP_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
