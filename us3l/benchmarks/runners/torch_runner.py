"""PyTorch eager runner (CPU or CUDA) on the static sliced module."""

from __future__ import annotations

from typing import Any

import numpy as np

from us3l.core.errors import BackendUnavailableError, ConfigError
from us3l.core.precision import Precision

from .base import LocalRunner, RunnerOptions
from .registry import register_runner


@register_runner("torch")
class TorchRunner(LocalRunner):
    """Times the static ``nn.Module`` under ``torch.inference_mode``; CUDA is synchronised per run.

    ``threads`` sets ``torch.set_num_threads`` while active (restored on deactivate).
    """

    @classmethod
    def check_available(cls, options: RunnerOptions) -> None:
        import torch

        if options.device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("torch reports no CUDA device here; use --device cpu")

    def _activate(self) -> None:
        import torch

        if self.artifact.build_module is None:
            raise ConfigError("the torch runner needs a model source (checkpoint or --arch)")
        device = self.options.device
        if device not in ("cpu", "cuda"):
            raise ConfigError(f"torch runner device {device!r} is invalid; valid: cpu, cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("torch reports no CUDA device here; use --device cpu")
        self._old_threads = torch.get_num_threads()
        if self.options.threads:
            torch.set_num_threads(int(self.options.threads))
        module = self.artifact.build_module().eval().to(device)
        self._dtype = torch.float32
        precision = Precision.parse(self.options.precision)
        if precision is Precision.FP16:
            if device != "cuda":
                raise ConfigError("torch fp16 is only benchmarked on cuda; valid on cpu: fp32")
            module, self._dtype = module.half(), torch.float16
        elif precision is not Precision.FP32:
            raise ConfigError(f"torch runner precision {self.options.precision!r} is invalid; valid: fp32, fp16")
        self._module, self._device, self._torch = module, torch.device(device), torch
        self._sync = torch.cuda.synchronize if device == "cuda" else None

    def _deactivate(self) -> None:
        self._torch.set_num_threads(self._old_threads)
        self._module = None
        self._feeds.clear()

    def input_specs(self) -> dict[str, tuple[tuple[int | None, ...], np.dtype]]:
        shape = (None, *self.artifact.input_shape[1:])
        return {"input": (shape, np.dtype(np.float16 if self._dtype == self._torch.float16 else np.float32))}

    def _to_native(self, feed: dict[str, np.ndarray]) -> Any:
        return self._torch.from_numpy(feed["input"]).to(self._device)

    def _infer(self, native_feed: Any) -> Any:
        with self._torch.inference_mode():
            out = self._module(native_feed)
        if self._sync is not None:
            self._sync()
        return out
