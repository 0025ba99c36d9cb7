"""ONNX Runtime install checks: every wrong install names its exact fix."""

import pytest

from us3l.core.errors import BackendUnavailableError
from us3l.exporters.ort import INSTALL_GPU, check_device, installed_distributions, provider_problem

CPU = ["CPUExecutionProvider"]
GPU = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_cpu_always_runs_and_cuda_needs_the_cuda_provider():
    assert provider_problem("cpu", CPU, ["onnxruntime"]) is None
    assert provider_problem("cuda", GPU, ["onnxruntime-gpu"]) is None


@pytest.mark.parametrize("dists, expect", [
    (["onnxruntime"], "CPU-only"),
    (["onnxruntime", "onnxruntime-gpu"], "overwrite each other's files"),
    (["onnxruntime-gpu"], "CUDA provider did not load"),
])
def test_each_broken_gpu_install_names_its_fix(dists, expect):
    msg = provider_problem("cuda", CPU, dists)
    assert expect in msg and "\n" not in msg
    if expect != "CUDA provider did not load":
        assert msg.endswith(INSTALL_GPU)


def test_the_real_install_here():
    """This machine has the CPU build (the dev extra pulls us3l-deploy[onnxruntime]): cpu passes, cuda is
    refused with the CPU-only line, checked against the real onnxruntime."""
    assert installed_distributions() == ["onnxruntime"]
    check_device("cpu")
    with pytest.raises(BackendUnavailableError, match="CPU-only .*pip install 'us3l-deploy\\[onnxruntime-gpu\\]'"):
        check_device("cuda")
