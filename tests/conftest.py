"""Suite-wide settings: one intra-op thread (tests are small-op bound; on a shared 2-core machine
two threads mostly contend), deterministic seeds per test."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
