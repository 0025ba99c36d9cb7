"""What an exported artifact outputs: ``features`` | ``logits`` | ``probs`` | ``stages``.

- ``features``: the pooled backbone features (the default; with ``--include-head`` the probe's
  logits, as before).
- ``logits`` / ``probs``: the classifier of a task checkpoint (:mod:`us3l.core.taskmodel`; or the
  ``--include-head`` file), softmax appended for ``probs``.
- ``stages``: the multi-scale feature maps a detection or segmentation neck takes, as named outputs
  with the slice's channel counts: ``C2..C5`` = the outputs of ``layer1..layer4`` of the ResNets
  (strides 4/8/16/32 with the ImageNet stem, 1/2/4/8 with the CIFAR stem; ``us_resnet_mini`` has
  three stages, ``C2..C4``), and for MobileNetV2 the last block at each of the four coarsest
  resolutions before the final 1x1 conv (stride 4/8/16/32: blocks 3, 6, 13 and 17, i.e. 24, 32,
  96 and 320 channels at width 1.0), so every map is width-sliced.

The same wrapper runs on the slimmable network (under ``use_width``: the parity reference) and on
its static slice (the exported graph), so the gate compares like with like; multi-output parity
compares all maps at once (flattened and concatenated per image).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from us3l.core.errors import ConfigError, ExportError
from us3l.core.models.resnet import USResNet
from us3l.core.precision import Precision

OUTPUTS = ("features", "logits", "probs", "stages")


def check_outputs(outputs: str, fmt: str, precision: str) -> None:
    """Refuse combinations that cannot be produced (one line).

    Raises:
        ConfigError: unknown kind, or stages outside FP32 ONNX.
    """
    if outputs not in OUTPUTS:
        raise ConfigError(f"--outputs {outputs} is invalid; valid: {', '.join(OUTPUTS)}")
    if outputs == "stages" and (fmt != "onnx" or Precision.parse(precision).reduced):
        raise ConfigError("--outputs stages is exported as FP32 ONNX (several named maps); use --format onnx --precision fp32")


def _conv_stride(module: nn.Module) -> int:
    s = 1
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            st = m.stride if isinstance(m.stride, int) else m.stride[0]
            s *= int(st)
    return s


def stage_taps(model: nn.Module) -> list[tuple[str, str, int]]:
    """``(output name, module name, stride)`` of each stage map of ``model`` (slimmable or sliced).

    Raises:
        ExportError: an architecture without convolutional stages (the ViT).
    """
    if isinstance(model, USResNet):  # the slimmable ResNet or its static slice (a copy of the same class)
        stride = _conv_stride(model.conv1) * _conv_stride(model.maxpool)
        out = []
        for i in range(1, model.num_stages + 1):
            first = getattr(model, f"layer{i}")[0]  # the first block of a stage carries its stride
            stride *= max(int(m.stride if isinstance(m.stride, int) else m.stride[0])
                          for m in first.modules() if isinstance(m, nn.Conv2d))
            out.append((f"C{i + 1}", f"layer{i}", stride))
        return out
    if hasattr(model, "features") and isinstance(model.features, nn.Sequential):
        blocks = list(model.features)
        strides, s = [], 1
        for b in blocks[:-1]:  # the last block is the un-slimmed 1x1 conv to 1280 channels
            s *= _conv_stride(b)
            strides.append(s)
        last: dict[int, int] = {}
        for i, st in enumerate(strides):
            last[st] = i
        chosen = sorted(last.items())[-4:]
        return [(f"C{k + 2}", f"features.{i}", st) for k, (st, i) in enumerate(chosen)]
    raise ExportError(f"{getattr(model, 'arch', type(model).__name__)} has no convolutional stages; "
                      "--outputs stages needs a ResNet or MobileNetV2")


class StageOutputs(nn.Module):
    """``model``'s stage maps as a tuple (the wrapped model is shared, not copied)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.net = model
        self.taps = stage_taps(model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.net
        outs = []
        if isinstance(m, USResNet):
            x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            for i in range(1, m.num_stages + 1):
                x = getattr(m, f"layer{i}")(x)
                outs.append(x)
            return tuple(outs)
        features = m.features
        assert isinstance(features, nn.Sequential)  # stage_taps accepted only such a network in __init__
        wanted = {int(mod.split(".")[1]) for _, mod, _ in self.taps}
        for i, block in enumerate(features):
            x = block(x)
            if i in wanted:
                outs.append(x)
            if len(outs) == len(wanted):
                break
        return tuple(outs)


def deploy_module(backbone: nn.Module, head: nn.Module | None, outputs: str) -> nn.Module:
    """The module whose outputs an artifact of kind ``outputs`` carries (``backbone`` may be the
    slimmable network under ``use_width`` or its static slice).

    Raises:
        ExportError: ``logits``/``probs`` without a head.
    """
    if outputs == "stages":
        return StageOutputs(backbone).eval()
    if outputs in ("logits", "probs"):
        if head is None:
            raise ExportError("--outputs logits/probs needs a classifier")
        parts = [backbone, head] + ([nn.Softmax(dim=1)] if outputs == "probs" else [])
        return nn.Sequential(*parts).eval()
    return nn.Sequential(backbone, head).eval() if head is not None else backbone


def output_names(outputs: str, head: nn.Module | None, model: nn.Module) -> list[str]:
    """Graph output names of an artifact."""
    if outputs == "stages":
        return [name for name, _, _ in stage_taps(model)]
    if outputs == "probs":
        return ["probs"]
    return ["logits"] if head is not None else ["features"]


def flatten_outputs(out: Any) -> np.ndarray:
    """One ``(N, D)`` array from a tensor, an array or a tuple/list of them (multi-output parity)."""
    items = out if isinstance(out, (tuple, list)) else [out]
    arrays = [o.detach().cpu().numpy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in items]
    return np.concatenate([a.reshape(a.shape[0], -1) for a in arrays], axis=1)


def multi_output_runner(path: Path, batch: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX Runtime runner returning every output, flattened and concatenated per image."""
    from .onnx_exporter import batched_runner, ort_session

    sess = ort_session(path, threads=1)
    name = sess.get_inputs()[0].name
    return batched_runner(lambda x: flatten_outputs(sess.run(None, {name: x.astype(np.float32)})), batch)


def metadata_props(outputs: str, names: list[str], normalization: dict[str, Any] | None, input_size: int,
                   classes: list[str], preprocess: dict[str, Any] | None) -> dict[str, str]:
    """The ``metadata_props`` an artifact carries for its users (strings; lists as JSON)."""
    props = {"us3l.outputs": outputs, "us3l.output_names": ",".join(names), "us3l.input_size": str(int(input_size))}
    if normalization:
        props["us3l.mean"] = json.dumps([float(v) for v in normalization["mean"]])
        props["us3l.std"] = json.dumps([float(v) for v in normalization["std"]])
    if classes:
        props["us3l.classes"] = json.dumps(list(classes))
    if preprocess:
        props["us3l.preprocess"] = json.dumps(preprocess, sort_keys=True)
    return props
