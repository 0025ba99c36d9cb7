"""The export pipeline: checkpoint → per width: BN statistics → slice → export → parity → write.

``export(ExportConfig(...))`` is the one library entry point behind ``us3l export`` (and what the
benchmarks call). Widths whose sliced channel configurations are identical are exported once
(the others are listed as ``aliases``). A second identical run reuses artifacts whose sidecar
records the same cache key and whose file hash still matches. Nothing reaches ``out_dir`` unless
every width passed its parity gate (see :class:`us3l.exporters.artifacts.Staging`).

Channel snapping (``snap``): the divisor of the one channel function
(:func:`us3l.core.width.channels_at`) becomes 16 or 32 instead of the method's 8: each layer's
count is rounded to the nearest multiple of the divisor (halves up), at least one divisor above
when that rounding lost more than 10 % (the same rule, larger grid). Snapped networks differ
from the method's (more channels at some widths, fewer at others) and get their own BN
statistics, but parity stays exact against ``use_width(model, w, divisor=snap)``.
"""

from __future__ import annotations

import functools
import logging
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from us3l.core.version import __version__
from us3l.core.context import use_width
from us3l.core.errors import ConfigError, ExportError, ParityError
from us3l.core.files import relative_path, sha256_file
from us3l.core.precision import PRECISIONS, Precision  # noqa: F401  (PRECISIONS: re-exported)
from us3l.core.profile import count_macs
from us3l.core.slicing import channel_config, find_aliases, slice_to_width
from us3l.core.width import format_width, parse_widths

from .artifacts import SIDECAR_SCHEMA, Artifact, ExportResult, Staging, artifact_stem, cached_artifact, jsonable, tool_versions
from .onnx_exporter import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, ONNX_EXPORTERS, default_exporter
from .outputs import (check_outputs, deploy_module, flatten_outputs, metadata_props, multi_output_runner,
                      output_names, stage_taps)
from .onnx_quant import CALIBRATION_METHODS, DEFAULT_CALIBRATION, RANGES_SUFFIX, accuracy_gate, enforce_gate
from .parity import compare, enforce
from .registry import Exporter, ExportRequest, get_exporter
from .source import CalibrationSet, Network, bn_plan, check_input_size, load_head, load_network, prepare_bn

log = logging.getLogger(__name__)

#: Other names users type for a format (TensorRT users say "engine"; trtexec writes .engine files).
FORMAT_ALIASES = {"engine": "trt"}
SNAP_DIVISORS = (8, 16, 32)
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ExportConfig:
    """Everything ``us3l export`` needs (one frozen config per command).

    Args:
        checkpoint: our checkpoint file; or None with ``arch`` for an untrained network.
        arch: architecture name (untrained network, statistics from random inputs).
        widths: ``"0.35"``, a list ``"0.25,0.5"``, a range ``"0.25:1.0:0.05"`` or a sequence of floats.
        format: ``onnx`` | ``trt`` (alias ``engine``) | ``pt2`` (see :func:`us3l.exporters.list_exporters`).
        out_dir: output directory (created on success only).
        name: artifact name prefix (default: checkpoint stem or arch).
        batch: fixed batch size, or None for a dynamic batch axis.
        opset: ONNX opset (default 17, see :mod:`us3l.exporters.onnx_exporter`).
        snap: channel divisor: 8 (the method), 16 or 32 (hardware snapping).
        precision: ``fp32`` | ``fp16`` | ``int8``. ONNX INT8 is ONNX Runtime static quantization (QDQ,
            per-channel weights) calibrated on real images; ONNX FP16 is ONNX Runtime's converter
            (float32 I/O kept). Both are converted from the FP32 ONNX of the same width, which is
            exported (and cached) too.
        calib_data: ``.npy``/``.pt`` NCHW image array or a dataset ``name[:root]`` for BN
            recalibration, parity inputs and INT8 calibration (default: the checkpoint's training data).
        bn_images / calib_batch_size: images and batch size for BN recalibration.
        int8_images: INT8 calibration images (fewer when the set is small: held-out gate images are
            kept out of calibration).
        calibration: INT8 calibration method: ``minmax`` (default, see :mod:`us3l.exporters.onnx_quant`),
            ``entropy`` or ``percentile``.
        parity_images: images compared in the FP32 parity gate.
        gate_images / min_cosine: reduced precisions are gated on the mean cosine similarity of their
            features to FP32 on this many held-out images (None: per precision, fp16 0.999, int8 0.95).
        atol / rtol: parity tolerance (None: per-precision default, fp32 1e-4).
        simplify: run onnxsim.
        include_head: ``.pt`` with a linear probe ``{"weight", "bias"}`` appended to the features.
        outputs: ``features`` (default), ``logits`` / ``probs`` (the task checkpoint's classifier, or
            ``include_head``) or ``stages`` (multi-scale maps, :mod:`us3l.exporters.outputs`).
        image_size: square input side in pixels (default: the architecture's).
        force: rebuild and overwrite existing artifacts.
        seed: seed for the untrained network and data order.
        onnx_exporter: ``dynamo`` (default, torch's supported exporter; ``$US3L_ONNX_EXPORTER``
            overrides the default) or ``torchscript``
            (the legacy exporter: an explicit fallback, about 2x faster).
        workspace_mib / max_batch / opt_batch / timing_cache: TensorRT build options.
        threads: torch intra-op threads while exporting (restored afterwards); 0 = auto, one per
            CPU that other processes leave idle (:mod:`us3l.core.threads`). Export work is many
            small calls: on a shared machine more threads than free CPUs make it several times slower.
        substitute: ladders of two or more distinct widths translate one width to ONNX and derive
            the others from that graph (:mod:`us3l.exporters.ladder`); False translates every width.
            A width that cannot be derived is translated in full, and its sidecar says why
            (``export.method``, ``export.fallback``).
        switchable: write one ONNX file holding every width, chosen at run time by an int64
            ``width_index`` input (:mod:`us3l.exporters.switchable`); ONNX fp32 or fp16 only.
        int8_recipe / int8_min_agreement: ONNX INT8 only. ``auto`` (default) chooses each width's
            recipe on the held-out gate images (:mod:`us3l.exporters.int8_recipe`: calibration
            method, then the head / stem / last block kept in FP32, until a classifier's top-1
            agrees with FP32 on ``int8_min_agreement`` of them, or features keep a mean cosine of
            0.99); ``fixed`` quantizes every layer with ``calibration``. More ``gate_images`` give
            the agreement a finer resolution (64 images: 1.6 points per image).
    """

    checkpoint: str | None = None
    arch: str | None = None
    widths: str | float | tuple[float, ...] = "1.0"
    format: str = "onnx"
    out_dir: str = "exports"
    name: str | None = None
    batch: int | None = None
    opset: int = DEFAULT_OPSET
    snap: int = 8
    precision: str | Precision = Precision.FP32
    calib_data: str | None = None
    bn_images: int = 512
    calib_batch_size: int = 64
    int8_images: int = 500
    calibration: str = DEFAULT_CALIBRATION
    parity_images: int = 16
    gate_images: int = 64
    min_cosine: float | None = None
    atol: float | None = None
    rtol: float | None = None
    simplify: bool = True
    include_head: str | None = None
    image_size: int | None = None
    force: bool = False
    seed: int = 0
    onnx_exporter: str = field(default_factory=default_exporter)
    workspace_mib: int = 1024
    max_batch: int = 32
    opt_batch: int = 1
    timing_cache: str | None = None
    threads: int = 0
    outputs: str = "features"
    substitute: bool = True
    switchable: bool = False
    int8_recipe: str = "auto"
    int8_min_agreement: float = 0.99

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", FORMAT_ALIASES.get(self.format, self.format))
        object.__setattr__(self, "precision", Precision.parse(self.precision, "--precision"))
        if self.snap not in SNAP_DIVISORS:
            raise ConfigError(f"--snap {self.snap} is not supported; valid: {', '.join(map(str, SNAP_DIVISORS))}")
        if self.batch is not None and self.batch < 1:
            raise ConfigError(f"--batch {self.batch} is invalid; valid: a positive integer, or omit for a dynamic batch")
        if self.onnx_exporter not in ONNX_EXPORTERS:
            raise ConfigError(f"unknown ONNX exporter {self.onnx_exporter!r}; valid: {', '.join(ONNX_EXPORTERS)}")
        if self.calibration not in CALIBRATION_METHODS:
            raise ConfigError(f"--calibration {self.calibration} is invalid; valid: {', '.join(CALIBRATION_METHODS)}")
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise ConfigError(f"--min-cosine {self.min_cosine} is invalid; valid: a number in [-1, 1]")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConfigError(f"--opset {self.opset} is not supported; valid: {MIN_OPSET}..{MAX_OPSET}")
        for what, v in (("atol", self.atol), ("rtol", self.rtol)):
            if v is not None and not v >= 0:
                raise ConfigError(f"{what} {v} is invalid; valid: a number >= 0")
        for what, v in (("bn_images", self.bn_images), ("calib_batch_size", self.calib_batch_size),
                        ("int8_images", self.int8_images), ("parity_images", self.parity_images),
                        ("gate_images", self.gate_images),
                        ("max_batch", self.max_batch), ("opt_batch", self.opt_batch)):
            if v < 1:
                raise ConfigError(f"{what} {v} is invalid; valid: a positive integer")
        from us3l.core.checks import check_number

        check_number("--image-size", self.image_size, minimum=4, integer=True)
        from us3l.core.threads import check_threads

        check_threads(self.threads)
        from .int8_recipe import RECIPE_MODES

        if self.int8_recipe not in RECIPE_MODES:
            raise ConfigError(f"--int8-recipe {self.int8_recipe} is invalid; valid: {', '.join(RECIPE_MODES)}")
        if not 0 < self.int8_min_agreement <= 1:
            raise ConfigError(f"--int8-min-agreement {self.int8_min_agreement} is invalid; valid: a fraction in (0, 1]")


@dataclass
class _Group:
    width: float
    aliases: list[float]
    channels: dict[str, int]


@dataclass(frozen=True)
class _Names:
    """File names of one artifact: the file, its sidecar and (ONNX INT8) its calibration ranges."""

    file: str
    sidecar: str
    ranges: str | None = None


@dataclass
class _Build:
    """One artifact being built: what the steps of :meth:`_Run.artifact` hand to each other."""

    group: _Group
    exporter: Exporter
    precision: Precision
    names: _Names
    plan: dict[str, Any]
    key: dict[str, Any]
    onnx: Artifact | None
    start: float
    static: nn.Module
    feature_dim: int
    head: nn.Module | None
    deploy: nn.Module
    output_names: list[str]
    inputs: torch.Tensor | None = None  # gate inputs (held out from INT8 calibration)
    calib_images: np.ndarray | None = None  # INT8 calibration images
    reference: torch.Tensor | None = None  # the slimmable network's outputs (stages: flattened)
    reference_out: Any = None  # as the deployed module returns them (stages: a tuple of maps)
    request: ExportRequest | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # what the exporter reported
    parity: dict[str, Any] | None = None  # the gate record

    @property
    def reduced(self) -> bool:
        """A precision below FP32 (gated on cosine similarity, on held-out images)."""
        return self.precision.reduced


def _base(cfg: ExportConfig, net: Network) -> str:
    return Path(cfg.checkpoint).name.split(".")[0] if cfg.checkpoint else net.arch


class _Run:
    """State of one ``export`` call (internal)."""

    def __init__(self, cfg: ExportConfig, net: Network, calib: CalibrationSet, staging: Staging) -> None:
        self.cfg, self.net, self.calib, self.staging = cfg, net, calib, staging
        self.out_dir = Path(cfg.out_dir)
        self.input_shape = (net.model.in_chans, calib.input_size, calib.input_size)
        self.head_digest = sha256_file(cfg.include_head) if cfg.include_head else None
        if self.head_digest is None and cfg.outputs in ("logits", "probs") and net.checkpoint is not None:
            from us3l.core.taskmodel import head_digest

            self.head_digest = head_digest(net.checkpoint)
        self.locations: dict[str, Path] = {}  # artifact name -> where it is now (staging or out_dir)
        self.ladder: Any = None  # us3l.exporters.ladder.Ladder when the ladder is derived by substitution
        self.keep: dict[float, nn.Module] | None = None  # width -> exported static module (switchable files)
        self.timing_name = f"{cfg.name or _base(cfg, net)}.timing.cache"
        if cfg.format == "trt" and not cfg.timing_cache and (self.out_dir / self.timing_name).is_file():
            shutil.copyfile(self.out_dir / self.timing_name, staging.dir / self.timing_name)

    def key(self, width: float, fmt: str, precision: Precision, plan: dict[str, Any]) -> dict[str, Any]:
        c = self.cfg
        return jsonable({"checkpoint": self.net.source_hash, "width": format_width(width), "format": fmt, "opset": c.opset,
                "batch": c.batch, "snap": c.snap, "precision": precision, "tool": __version__, "bn": plan,
                "input_shape": list(self.input_shape), "head": self.head_digest, "simplify": c.simplify,
                "exporter": c.onnx_exporter, **({"outputs": c.outputs} if c.outputs != "features" else {}),
                "parity": ["cosine", self._min_cosine(precision), c.gate_images] if precision.reduced
                else [self._tolerance(precision), c.parity_images],
                "int8": [c.calibration, c.int8_images, self.calib.describe()]
                + ([c.int8_recipe, c.int8_min_agreement] if c.int8_recipe != "fixed" and fmt == "onnx" else [])
                if precision.plan.calibrated else None,
                "trt": [c.workspace_mib, c.max_batch, c.opt_batch, c.int8_images] if fmt == "trt" else None})

    def _min_cosine(self, precision: Precision) -> float:
        default = precision.plan.min_cosine
        assert default is not None, "only reduced precisions are gated on cosine similarity"
        return self.cfg.min_cosine if self.cfg.min_cosine is not None else default

    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(calibration images, held-out gate images): the gate never sees a calibration image
        (the last images of the seeded order are held out; at most a fifth of a small set)."""
        x = self.calib.images()
        n_gate = min(self.cfg.gate_images, max(1, len(x) // 5)) if len(x) > 1 else len(x)
        return x[: min(self.cfg.int8_images, len(x) - n_gate) or len(x)], x[len(x) - n_gate:]

    def _tolerance(self, precision: Precision) -> tuple[float, float]:
        atol, rtol = precision.plan.tolerance
        return (self.cfg.atol if self.cfg.atol is not None else atol, self.cfg.rtol if self.cfg.rtol is not None else rtol)

    def artifact(self, group: _Group, exporter: Exporter, precision: Precision, onnx: Artifact | None = None) -> Artifact:
        """One artifact of ``group`` in ``exporter``'s format at ``precision`` (``onnx``: the FP32 ONNX
        it is built from), reused when the cached one has the same key, else built in named steps:
        network -> reference outputs -> file -> gate -> sidecar record."""
        names = self.names(group, exporter, precision)
        plan = bn_plan(self.net, self.calib, group.width, self.cfg.snap, self.cfg.bn_images)
        key = self.key(group.width, exporter.name, precision, plan)
        reused = self.reuse(group, names, key)
        if reused is not None:
            return reused
        build = self.network(group, exporter, precision, names, plan, key, onnx)
        self.reference(build)
        self.write_file(build)
        try:
            self.gate(build)
        except ParityError as exc:
            if (build.facts.get("export") or {}).get("method") != "substituted":
                raise
            self.translate_again(build, exc)
        data = self.sidecar_record(build)
        self.staging.write_json(names.sidecar, data)
        assert build.request is not None
        self.locations[names.file] = build.request.path
        return Artifact.from_sidecar(self.out_dir / names.sidecar, data, cached=False)

    def names(self, group: _Group, exporter: Exporter, precision: Precision) -> _Names:
        """File names of the artifact, its sidecar and (ONNX INT8) its calibration ranges."""
        cfg = self.cfg
        prefix = (cfg.name or _base(cfg, self.net)) + ("" if cfg.outputs == "features" else f"_{cfg.outputs}")
        stem = artifact_stem(prefix, group.width, cfg.snap, cfg.batch, exporter.name, precision)
        ranges = stem + RANGES_SUFFIX if precision.plan.calibrated and exporter.name == "onnx" else None
        return _Names(stem + exporter.suffix, stem + ".json", ranges)

    def reuse(self, group: _Group, names: _Names, key: dict[str, Any]) -> Artifact | None:
        """The artifact already in ``out_dir`` with the same cache key and a verified hash (its
        sidecar's alias list refreshed), or ``None``."""
        old = cached_artifact(self.out_dir / names.file, self.out_dir / names.sidecar, key, self.cfg.force,
                              repairable=names.file in self.staging.repairable)
        if old is None:
            return None
        self.locations[names.file] = self.out_dir / names.file
        self.staging.settled.update((names.file, names.sidecar))
        if sorted(old.get("aliases", [])) != sorted(group.aliases):
            self.staging.write_json(names.sidecar, {**old, "aliases": group.aliases})
        log.info("Reusing %s (same cache key, hash verified)", names.file)
        return Artifact.from_sidecar(self.out_dir / names.sidecar, {**old, "aliases": group.aliases}, cached=True)

    def network(self, group: _Group, exporter: Exporter, precision: Precision, names: _Names, plan: dict[str, Any],
                key: dict[str, Any], onnx: Artifact | None) -> _Build:
        """BN statistics for the width, the plain static network, its head and the deployed module."""
        cfg, net, w = self.cfg, self.net, group.width
        start = time.perf_counter()
        prepare_bn(net, self.calib, w, cfg.snap, plan, cfg.calib_batch_size)
        static = slice_to_width(net.model, w, cfg.snap)
        feature_dim = int(net.model.feature_dim(w, cfg.snap))
        head = load_head(cfg.include_head, feature_dim, net.model.max_feature_dim)
        if head is None and cfg.outputs in ("logits", "probs"):
            head = _checkpoint_head(net, w, feature_dim)
        deploy = deploy_module(static, head, cfg.outputs)
        if self.keep is not None and precision == Precision.FP32 and exporter.name == "onnx":
            self.keep[w] = deploy
        return _Build(group=group, exporter=exporter, precision=precision, names=names, plan=plan, key=key,
                      onnx=onnx, start=start, static=static, feature_dim=feature_dim, head=head,
                      deploy=deploy, output_names=output_names(cfg.outputs, head, static))

    def translate_again(self, b: _Build, failure: ParityError) -> None:
        """A substituted file failed its gate: translate the width in full (sidecar
        ``export.fallback`` says why) and gate that."""
        assert b.request is not None
        log.warning("substituted width %s failed its gate; translating it in full", format_width(b.group.width))
        b.request = replace(b.request, options={**b.request.options, "ladder": None})
        b.facts = b.exporter.export(b.request)
        b.facts["export"]["fallback"] = f"parity gate after substitution: {str(failure).split('; minimum')[0][:200]}"
        self.gate(b)

    def reference(self, b: _Build) -> None:
        """The inputs the gate compares on and the slimmable network's outputs on them: held-out
        images for a reduced precision (the rest calibrate INT8), else the first parity images."""
        cfg, net = self.cfg, self.net
        if b.reduced:
            calib_x, b.inputs = self.split()
            if b.precision.plan.calibrated:
                if self.calib.kind == "random" and not net.untrained:
                    raise ExportError("INT8 calibration needs real images; pass --calib-data")
                b.calib_images = calib_x.numpy()
        else:
            b.inputs = self.calib.images()[: cfg.parity_images]
        with torch.no_grad(), use_width(net.model, b.group.width, cfg.snap):
            b.reference_out = deploy_module(net.model, b.head, cfg.outputs)(b.inputs)
        b.reference = (torch.from_numpy(flatten_outputs(b.reference_out)) if cfg.outputs == "stages"
                       else b.reference_out)

    def metadata(self, b: _Build) -> dict[str, str]:
        """Key/values stored inside the artifact (width, provenance, I/O, classes, preprocessing)."""
        cfg, net, w = self.cfg, self.net, b.group.width
        meta = {"us3l.width": format_width(w), "us3l.arch": net.arch, "us3l.checkpoint_sha256": net.source_hash,
                "us3l.tool_version": __version__, "us3l.snap": str(cfg.snap), "us3l.untrained": str(net.untrained).lower(),
                "us3l.aliases": ",".join(format_width(a) for a in b.group.aliases)}
        classes, preprocess = self._task_facts
        meta.update(metadata_props(cfg.outputs, b.output_names, self.calib.normalization(), self.input_shape[-1],
                                   classes, preprocess))
        return meta

    def write_file(self, b: _Build) -> None:
        """The exporter writes the file into staging."""
        cfg = self.cfg
        options = {"exporter": cfg.onnx_exporter, "workspace_mib": cfg.workspace_mib, "max_batch": cfg.max_batch,
                   "opt_batch": cfg.opt_batch, "timing_cache": self.timing_cache_path(), "calibration": cfg.calibration}
        if b.names.ranges:
            options["ranges_path"] = str(self.staging.path(b.names.ranges))
        if self.ladder is not None and b.exporter.name == "onnx" and b.precision == Precision.FP32:
            options["ladder"] = self.ladder
        if b.precision.plan.calibrated and b.exporter.name == "onnx" and cfg.int8_recipe == "auto":
            from .int8_recipe import RecipeRequest

            assert b.inputs is not None and b.reference is not None
            options["int8_recipe"] = RecipeRequest(inputs=b.inputs.numpy(), reference=b.reference.numpy(),
                                                   classifier=b.head is not None,
                                                   min_agreement=cfg.int8_min_agreement,
                                                   gate_cosine=self._min_cosine(b.precision))
        names = b.output_names
        b.request = ExportRequest(
            static=b.deploy, path=self.staging.path(b.names.file), input_shape=self.input_shape, batch=cfg.batch,
            opset=cfg.opset, precision=b.precision, output_name=names[0],
            output_names=tuple(names) if len(names) > 1 else (), metadata=self.metadata(b), simplify=cfg.simplify,
            onnx_path=self.locations.get(b.onnx.path.name) if b.onnx else None, calib_images=b.calib_images,
            options=options)
        b.facts = b.exporter.export(b.request)

    def gate(self, b: _Build) -> None:
        """Run the written file on the gate inputs and compare with the reference: elementwise
        tolerance at FP32; for a reduced precision (large absolute error by design) the cosine
        similarity of what the outputs keep. Raises on failure (nothing is written then)."""
        cfg, req = self.cfg, b.request
        assert req is not None and b.inputs is not None and b.reference is not None
        run_file = multi_output_runner(req.path, cfg.batch) if cfg.outputs == "stages" else b.exporter.runner(req.path, req)
        out = run_file(b.inputs.numpy())
        runtime = b.facts.get("runtime", "onnxruntime" if b.exporter.name == "onnx" else b.exporter.name)
        what = f"{b.exporter.name} {b.precision} width {format_width(b.group.width)}"
        if b.reduced:
            gate = accuracy_gate(b.reference.numpy(), out, self._min_cosine(b.precision), runtime, self.calib.kind,
                                 b.head is not None)
            b.parity = gate.to_dict()
            enforce_gate(gate, what)
        else:
            atol, rtol = self._tolerance(b.precision)
            record = compare(b.reference.numpy(), out, atol, rtol, runtime, self.calib.kind)
            enforce(record, what)
            b.parity = record.to_dict()

    def calibration_record(self, b: _Build) -> dict[str, Any] | None:
        """How an INT8 artifact was calibrated (method, images, data, ranges file), else ``None``."""
        if not b.precision.plan.calibrated:
            return None
        assert b.calib_images is not None and b.inputs is not None
        reported = b.facts.pop("calibration", None) or {}  # the TRT exporter reports its calibrator here too
        record = {**reported,
                  "method": reported.get("method", "entropy2" if b.exporter.name == "trt" else self.cfg.calibration),
                  "images": int(len(b.calib_images)), "data": self.calib.describe(), "kind": self.calib.kind,
                  "held_out_gate_images": int(len(b.inputs))}
        if b.names.ranges:
            record["ranges_file"] = b.names.ranges
            record["tensorrt"] = {"<=10": "trtexec --int8 --calib=<cache derived from ranges_file>",
                                  ">=11": "symmetric int8 Q/DQ ONNX derived from ranges_file"}
        return record

    def sidecar_record(self, b: _Build) -> dict[str, Any]:
        """The sidecar JSON of a built artifact: identity and hash, the network (width, channels,
        MACs, BN plan), I/O contract, task facts, gate record, calibration, versions, cache key, build."""
        cfg, net, req = self.cfg, self.net, b.request
        assert req is not None
        calibration = self.calibration_record(b)  # before the facts are recorded: it takes its entry out of them
        with torch.no_grad():
            macs = count_macs(b.deploy, torch.zeros(1, *self.input_shape))
        params = int(sum(p.numel() for p in b.deploy.parameters()))
        out_dim = b.feature_dim if b.head is None else b.head.out_features
        classes, preprocess = self._task_facts
        batch_dim = cfg.batch or "batch"
        return {
            "schema": SIDECAR_SCHEMA, "artifact": b.names.file, "format": b.exporter.name, "precision": b.precision,
            "sha256": sha256_file(req.path), "size_bytes": req.path.stat().st_size, "width": b.group.width,
            "aliases": b.group.aliases, "divisor": cfg.snap,
            "arch": net.arch, "arch_kwargs": net.arch_kwargs, "untrained": net.untrained,
            "checkpoint": {"path": relative_path(net.source_path, self.out_dir), "sha256": net.source_hash,
                           "method": net.method},
            "channels": b.group.channels, "feature_dim": out_dim, "macs": macs, "params": params, "bn": b.plan,
            "input": {"name": req.input_name, "shape": [batch_dim, *self.input_shape], "dtype": "float32",
                      "normalization": self.calib.normalization()},
            "output": {"name": req.output_name, "names": b.output_names, "kind": cfg.outputs,
                       "shape": None if cfg.outputs == "stages" else [batch_dim, out_dim]},
            "stages": [{"name": n, "module": m, "stride": s, "channels": int(o.shape[1]),
                        "shape": [batch_dim, *o.shape[1:]]}
                       for (n, m, s), o in zip(stage_taps(b.static), b.reference_out)] if cfg.outputs == "stages" else None,
            "classes": classes or None, "preprocess": preprocess,
            "head": self.head_record(b.group.width, b.feature_dim) if b.head is not None else None,
            "export": b.facts.pop("export", None) or {"method": "converted" if b.onnx is not None else "traced"},
            "parity": b.parity, "calibration": calibration, "opset": cfg.opset, "versions": tool_versions(),
            "format_info": b.facts, "source_onnx": b.onnx.path.name if b.onnx else None, "cache_key": b.key,
            "build": {"time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "seconds": round(time.perf_counter() - b.start, 3), "host": platform.node()},
        }

    @functools.cached_property
    def _task_facts(self) -> tuple[list[str], dict[str, Any] | None]:
        return self.task_facts()

    def head_record(self, width: float, feature_dim: int) -> dict[str, Any]:
        """What classifier the artifact carries: an ``--include-head`` file, or the task checkpoint's
        head, with, for per-width heads, which width's head serves ``width`` and why (exact or nearer)."""
        if self.cfg.include_head:
            return {"source": "include-head", "path": relative_path(self.cfg.include_head, self.out_dir),
                    "sha256": self.head_digest}
        from us3l.core.taskmodel import choose_head, head_tensors

        assert self.net.checkpoint is not None
        choice = choose_head(self.net.checkpoint, width)
        weight, _ = head_tensors(self.net.checkpoint, width)
        return {"source": "checkpoint", "sha256": self.head_digest, **choice,
                "features_used": int(min(feature_dim, weight.shape[1]))}

    def task_facts(self) -> tuple[list[str], dict[str, Any] | None]:
        """(class names, preprocessing record) the artifact's users need; empty/None when unknown."""
        from us3l.core.preprocess import preprocessing_for
        from us3l.core.taskmodel import classes_of

        ckpt = self.net.checkpoint
        classes = classes_of(ckpt) if ckpt is not None else []
        spec = self.calib._spec()
        if spec is not None:
            return classes, preprocessing_for(spec, self.input_shape[-1])
        task = ((ckpt.extra or {}).get("task") or {}) if ckpt is not None else {}
        pre = task.get("preprocess")
        return classes, ({**pre, "size": int(self.input_shape[-1])} if pre else None)

    def timing_cache_path(self) -> str | None:
        if self.cfg.format != "trt":
            return None
        return self.cfg.timing_cache or str(self.staging.dir / self.timing_name)


def run_export(cfg: ExportConfig, progress: Progress | None = None, network: Network | None = None) -> ExportResult:
    """Export every requested width of a checkpoint (or an untrained architecture).

    Args:
        cfg: the export configuration.
        progress: optional callback ``progress(done, total, message)``.
        network: an already loaded network (the Python API's in-memory model, whose BN bank may
            hold calibrations not yet saved); ``cfg.checkpoint`` then only names the artifacts.

    Returns:
        The artifacts, one per distinct channel configuration, in the order of ``cfg.widths``.

    Raises:
        WidthError, UnknownNameError, ConfigError, CheckpointError, DataError, BackendUnavailableError,
        ExportError, ParityError: one-line user errors; nothing is written to ``out_dir`` then.

    Examples:
        >>> res = export(ExportConfig(arch="us_resnet_mini", widths="0.25,0.5", out_dir="/tmp/mini"))
        >>> [a.path.name for a in res.artifacts]
        ['us_resnet_mini_w0.25.onnx', 'us_resnet_mini_w0.5.onnx']
    """
    from us3l.core.threads import choose_threads

    old_threads = torch.get_num_threads()
    torch.set_num_threads(choose_threads(cfg.threads).threads)
    try:
        if cfg.switchable:
            from .switchable import export_switchable

            return export_switchable(cfg, progress, network, _export, _base)
        if network is None and cfg.checkpoint and Path(cfg.checkpoint).suffix == ".onnx":
            from .switchable import export_from_switchable  # one width (or an engine) out of a switchable file

            return export_from_switchable(cfg, progress)
        return _export(cfg, progress, network)
    finally:
        torch.set_num_threads(old_threads)


def _export(cfg: ExportConfig, progress: Progress | None, network: Network | None,
            keep: dict[float, nn.Module] | None = None) -> ExportResult:
    t0 = time.perf_counter()
    exporter = get_exporter(cfg.format)
    if cfg.precision not in exporter.precisions:
        raise ConfigError(f"format {cfg.format} cannot produce {cfg.precision}; valid: {', '.join(exporter.precisions)}")
    exporter.check_available(cfg.precision)
    check_outputs(cfg.outputs, cfg.format, cfg.precision)
    if network is None:
        net = load_network(cfg.checkpoint, cfg.arch, cfg.seed, cfg.image_size)
    else:
        net = network
        if cfg.image_size and int(cfg.image_size) != net.model.input_size:
            check_input_size(net.model, int(cfg.image_size))
    widths = parse_widths(cfg.widths, *net.model.width_range)
    log.info("Exporting %s at %d width(s) as %s %s", net.arch, len(widths), cfg.format, cfg.precision)
    groups: dict[float, _Group] = {}
    for w, first in find_aliases(net.model, widths, cfg.snap).items():  # identical networks export once
        if first == w:
            groups[w] = _Group(w, [], channel_config(net.model, w, cfg.snap))
        else:
            groups[first].aliases.append(w)
    calib = CalibrationSet(cfg.calib_data, net.checkpoint.dataset if net.checkpoint else None,
                           int(cfg.image_size or net.model.input_size), net.model.in_chans, net.untrained, cfg.seed,
                           limit=max(cfg.bn_images, cfg.int8_images + cfg.gate_images, cfg.parity_images))
    result = ExportResult(out_dir=Path(cfg.out_dir))
    with Staging(Path(cfg.out_dir)) as staging:
        run = _Run(cfg, net, calib, staging)
        run.keep = keep
        precision = Precision.parse(cfg.precision)
        needs_onnx = exporter.needs_onnx or (cfg.format == "onnx" and precision.plan.converted)
        onnx_exporter = get_exporter("onnx") if needs_onnx else None
        order = list(groups.values())
        if cfg.substitute and len(groups) >= 2 and (cfg.format == "onnx" or needs_onnx):
            from .ladder import Ladder, choose_template, slimmable_counts

            run.ladder = Ladder()
            first = choose_template(groups, lambda w: {**slimmable_counts(net.model, w, cfg.snap),
                                                       **({"@batch": cfg.batch} if cfg.batch else {})})
            order.sort(key=lambda g: g.width != first)  # the template is translated first
        done: dict[float, Artifact] = {}
        for i, group in enumerate(order):
            if progress:
                progress(i, len(groups), f"w={format_width(group.width)}")
            onnx_art = run.artifact(group, onnx_exporter, Precision.FP32) if onnx_exporter else None
            done[group.width] = run.artifact(group, exporter, precision, onnx_art)
        result.artifacts.extend(done[w] for w in groups)
        if cfg.format == "trt" and not cfg.timing_cache and (staging.dir / run.timing_name).exists():
            staging.path(run.timing_name)  # the updated timing cache lands with the engines
        staging.commit()
    if progress:
        progress(len(groups), len(groups), "done")
    result.seconds = time.perf_counter() - t0
    log.info("Export finished: %d artifact(s), %d reused, %.1fs", len(result.artifacts), result.num_cached, result.seconds)
    return result


def _checkpoint_head(net: Network, width: float, feature_dim: int) -> nn.Module:
    """The task checkpoint's classifier at ``width`` as a plain linear layer."""
    from us3l.core.taskmodel import has_head, static_head

    if net.checkpoint is None or not has_head(net.checkpoint):
        raise ExportError("--outputs logits/probs needs a classifier: a task checkpoint ('us3l finetune', or the "
                          "classifier 'us3l eval --method linear' writes) or --include-head")
    return static_head(net.checkpoint, width, feature_dim)


def config_dict(cfg: ExportConfig) -> dict[str, Any]:
    """JSON-like form of a config (for logs and benchmark records)."""
    return asdict(cfg)
