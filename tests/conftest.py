"""Suite-wide settings: one intra-op thread in the test process and in the CLI subprocesses it
starts (tests are small-op bound, and pytest-xdist already runs one worker per core), deterministic
seeds per test, and the legacy ONNX exporter as the default for tests that export only as a means
(CLI, bench, docs, API).

torch's dynamo exporter, the product default, costs 2-35x more per export (docs/deployment.md §6.1)
and would put the suite far over its 10 minutes. The tests of the exporter itself name
``dynamo`` explicitly (tests/exporters/test_onnx.py, the opset and pipeline tests), and
tests/exporters/test_default_exporter.py checks that dynamo is the default without the variable.
"""

import os

import pytest
import torch

os.environ.setdefault("US3L_ONNX_EXPORTER", "torchscript")  # inherited by the CLI subprocesses too
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
