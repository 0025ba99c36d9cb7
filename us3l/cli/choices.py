"""Every choice option of the ``us3l`` commands as an Enum, so ``--help`` lists the choices and a
wrong value is refused with them before any work.

The values mirror the rooms' own vocabularies (:data:`us3l.core.data.DATASETS`,
:data:`us3l.exporters.outputs.OUTPUTS`, ...). They are written out here rather than imported,
so that ``us3l --help`` does not import torch; ``tests/cli/test_conventions.py`` fails if one
drifts from its source.
"""

from __future__ import annotations

from enum import Enum

from ..core.precision import Precision

__all__ = ["Augment", "Augmentation", "BadImage", "BenchOutputs", "Calibration", "Dataset", "EvalMethod", "Format",
           "Head", "Int8Recipe", "LinearPreset", "Metric", "OnnxExporter", "Outputs", "Precision", "Runner", "SSL", "Snap",
           "TrainMethod"]


class Dataset(str, Enum):
    """:data:`us3l.core.data.DATASETS`."""

    digits = "digits"
    fashion_mnist = "fashion-mnist"
    cifar10 = "cifar10"
    cifar100 = "cifar100"
    imagefolder = "imagefolder"


class TrainMethod(str, Enum):
    """:data:`us3l.trainer.config.METHODS`."""

    us3l = "us3l"
    naive = "naive"
    naive_contrastive = "naive-contrastive"
    single = "single"


class Augmentation(str, Enum):
    """:data:`us3l.trainer.config.AUGMENTATIONS` (SSL views; auto: from the data's channels)."""

    auto = "auto"
    color = "color"
    gray = "gray"


class SSL(str, Enum):
    """:data:`us3l.trainer.config.SSL_TYPES`."""

    simclr_momentum = "simclr_momentum"
    byol = "byol"
    mocov3 = "mocov3"


class BadImage(str, Enum):
    """:data:`us3l.core.images.BAD_IMAGE_POLICIES`."""

    skip = "skip"
    fail = "fail"


class EvalMethod(str, Enum):
    """:data:`us3l.trainer.evaluate.METHODS`."""

    knn = "knn"
    linear = "linear"
    both = "both"
    top1 = "top1"


class Augment(str, Enum):
    """:data:`us3l.trainer.finetune.AUGMENTS`."""

    auto = "auto"
    crop = "crop"
    shift = "shift"
    none = "none"


class Head(str, Enum):
    """:data:`us3l.trainer.finetune.HEADS` (one linear layer per width, or one shared input-slimmed layer)."""

    per_width = "per-width"
    shared = "shared"


class LinearPreset(str, Enum):
    """The keys of :data:`us3l.trainer.probes.LINEAR_PRESETS`."""

    fast = "fast"
    cifar = "cifar"


class Format(str, Enum):
    """:func:`us3l.exporters.list_exporters`, plus ``engine`` (what TensorRT users call ``trt``)."""

    onnx = "onnx"
    trt = "trt"
    engine = "engine"
    pt2 = "pt2"


class Calibration(str, Enum):
    """:data:`us3l.exporters.onnx_quant.CALIBRATION_METHODS`."""

    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class Outputs(str, Enum):
    """:data:`us3l.exporters.outputs.OUTPUTS`."""

    features = "features"
    logits = "logits"
    probs = "probs"
    stages = "stages"


class BenchOutputs(str, Enum):
    """:data:`us3l.benchmarks.artifacts.BENCH_OUTPUTS` (what bench exports and times; accuracy needs one output)."""

    features = "features"
    logits = "logits"
    probs = "probs"


class OnnxExporter(str, Enum):
    """:data:`us3l.exporters.onnx_exporter.ONNX_EXPORTERS`."""

    dynamo = "dynamo"
    torchscript = "torchscript"


class Snap(str, Enum):
    """:data:`us3l.exporters.pipeline.SNAP_DIVISORS` (channel divisors)."""

    s8 = "8"
    s16 = "16"
    s32 = "32"


class Metric(str, Enum):
    """:data:`us3l.benchmarks.stats.METRICS`."""

    p50 = "p50"
    p90 = "p90"
    p95 = "p95"
    p99 = "p99"
    mean = "mean"


class Runner(str, Enum):
    """:func:`us3l.benchmarks.list_runners` that a user names (the remote agent is chosen for them)."""

    torch = "torch"
    onnxruntime = "onnxruntime"
    tensorrt = "tensorrt"
    trtexec = "trtexec"


def value(choice: Enum | None) -> str | None:
    """The text of a choice (``None`` stays ``None``)."""
    return None if choice is None else str(choice.value)


class Int8Recipe(str, Enum):
    """:data:`us3l.exporters.int8_recipe.RECIPE_MODES`."""

    auto = "auto"
    fixed = "fixed"
