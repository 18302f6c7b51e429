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
