"""What a benchmark measures: one exported artifact per distinct width configuration.

:func:`prepare_artifacts` turns a model source (a checkpoint, or an architecture name for
latency planning before training) and a width list into :class:`BenchArtifact` records by
calling the exporter (``us3l.exporters.run_export``), reusing artifacts recorded in the lookup table
when their file is unchanged. Widths whose channel configuration is identical (aliases) share
one artifact and are measured once.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from us3l.core.errors import BackendUnavailableError, ConfigError
from us3l.core.files import sha256_file
from us3l.core.width import format_width, round_width

log = logging.getLogger(__name__)
BENCH_OUTPUTS = ("features", "logits", "probs")
#: What identifies a packed model directory's network (``accuracy.json`` and ``README.md`` may change
#: beside them without changing what is measured); :mod:`us3l.core.modelfile` names them too.
MODEL_DIR_FILES = ("config.json", "model.safetensors")


@dataclass(frozen=True)
class ModelSource:
    """The network to benchmark: a checkpoint file or an (untrained) architecture name.

    Attributes:
        checkpoint: a ``us3l train`` checkpoint (weights and BN bank are used).
        arch: architecture name for latency planning (random weights; latency is weight-free).
        snap: channel divisor (8 per the method; 16/32 snap channels for hardware).
        outputs: what the exported network returns: ``features`` (the backbone), ``logits`` or
            ``probs`` (a task checkpoint's classifier).
    """

    checkpoint: Path | None = None
    arch: str | None = None
    snap: int = 8
    outputs: str = "features"

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.arch is None):
            raise ConfigError("give exactly one of a checkpoint or --arch NAME")
        if self.outputs not in BENCH_OUTPUTS:
            raise ConfigError(f"--outputs {self.outputs!r} is invalid; valid: {', '.join(BENCH_OUTPUTS)}")
        if self.arch is not None and self.outputs != "features":
            raise ConfigError(f"--outputs {self.outputs} needs a classifier: a task checkpoint ('us3l finetune'); "
                              "an untrained --arch has features only")

    def key(self) -> str:
        """Stable identity of the source (checkpoint file hash or architecture name)."""
        return self._identity

    @functools.cached_property
    def _identity(self) -> str:  # hashed once per source object (frozen dataclasses allow cached_property)
        if self.checkpoint is not None and Path(self.checkpoint).is_dir():  # a packed model directory
            import hashlib

            files = [Path(self.checkpoint) / name for name in MODEL_DIR_FILES]
            return "dir:" + hashlib.sha256("|".join(sha256_file(f) for f in files).encode()).hexdigest()
        if self.checkpoint is not None:
            return "ckpt:" + sha256_file(self.checkpoint)
        return f"arch:{self.arch}"

    def slimmable(self) -> Any:
        """The slimmable network (checkpoint weights, or a fresh architecture)."""
        if self.checkpoint is not None:
            from us3l.core.checkpoint import load_checkpoint

            return load_checkpoint(self.checkpoint).build_model().eval()
        from us3l.core.models import get_model

        assert self.arch is not None  # a source is a checkpoint or an architecture
        return get_model(self.arch).eval()

    def width_info(self) -> dict:
        """``{"lo", "hi", "ladder", "hash", "classifier", "states", "has_dataset"}``: the width range,
        the checkpoint's BN-bank widths (the default ladder; empty for an architecture), its content
        hash (``None``), whether it carries a classifier, the sha256 of the PyTorch state per outputs
        kind (:func:`us3l.core.taskmodel.state_hashes`: what PyTorch accuracy rows were measured on)
        and whether it records its dataset."""
        if self.checkpoint is not None:
            from us3l.core.checkpoint import load_checkpoint
            from us3l.core.taskmodel import has_head, state_hashes

            ckpt = load_checkpoint(self.checkpoint)
            lo, hi = ckpt.width_range
            return {"lo": float(lo), "hi": float(hi), "ladder": sorted(round_width(w) for w in ckpt.bank_widths()),
                    "hash": ckpt.content_hash, "classifier": has_head(ckpt), "states": state_hashes(ckpt),
                    "has_dataset": bool(ckpt.dataset)}
        from us3l.core.models import get_model

        assert self.arch is not None
        lo, hi = get_model(self.arch).width_range
        return {"lo": float(lo), "hi": float(hi), "ladder": [], "hash": None, "classifier": False, "states": {},
                "has_dataset": False}

    def build_static(self, width: float) -> Any:
        """The plain ``nn.Module`` at ``width`` (for in-process runners such as ``torch``)."""
        from us3l.core.slicing import slice_to_width

        if self.checkpoint is not None:
            from us3l.core.checkpoint import load_checkpoint

            ckpt = load_checkpoint(self.checkpoint)
            model = ckpt.build_model()
            try:
                from us3l.core.bn import load_bn_stats

                stats = ckpt.bn_stats_for(width)
                if stats:
                    load_bn_stats(model, stats, width)
            except Exception as exc:  # BN values do not change latency; keep going
                log.info("no calibrated BN for width %s (%s); latency is unaffected", format_width(width), exc)
        else:
            from us3l.core.models import get_model

            assert self.arch is not None
            model = get_model(self.arch)
        static = slice_to_width(model.eval(), width, divisor=self.snap)
        if self.outputs == "features":
            return static
        from us3l.core.taskmodel import static_head
        from us3l.exporters.outputs import deploy_module

        # the classifier the exported file carries: the static backbone, the head at this width (+ softmax)
        net: Any = model  # a SlimmableNet: feature_dim(width, divisor)
        return deploy_module(static, static_head(ckpt, width, int(net.feature_dim(width, self.snap))), self.outputs)


@dataclass(frozen=True)
class BenchArtifact:
    """One measurable network (one distinct channel configuration).

    Attributes:
        width: the width it was exported at; aliases: other requested widths with identical channels.
        path: the ONNX file (``None`` for purely in-process artifacts).
        sha256: content hash of ``path`` (the lookup-table key).
        input_shape: example input shape (batch first); channels / macs / params: from the exporter.
        precision: precision the artifact was exported for (``fp16``/``int8``: an ONNX converted from
            ``source``, the FP32 ONNX of the same width).
        source: the FP32 ONNX a reduced-precision artifact was converted from (TensorRT builds
            from it on TensorRT <= 10), else None.
        ranges: the INT8 activation ranges file (TensorRT calibration cache / Q/DQ), else None.
        outputs: what the network returns (``features``, ``logits``, ``probs``).
        build_module: callable returning the static ``nn.Module`` (for the ``torch`` runner).
        width_index: for a switchable file measured as it is, the ``width_index`` fed with every
            run (``path`` is then the switchable file and ``sha256`` its hash + ``#index``), else None.
    """

    width: float
    path: Path | None
    sha256: str
    input_shape: tuple[int, ...]
    channels: Any = None
    macs: int | None = None
    params: int | None = None
    aliases: tuple[float, ...] = ()
    precision: str = "fp32"
    source: Path | None = None
    ranges: Path | None = None
    outputs: str = "features"
    build_module: Callable[[], Any] | None = field(default=None, compare=False, repr=False)
    width_index: int | None = None

    def record(self) -> dict:
        """JSON-ready fields (no callables) for the lookup table and reports."""
        return {
            "width": self.width, "path": str(self.path) if self.path else None, "sha256": self.sha256,
            "input_shape": list(self.input_shape), "channels": self.channels, "macs": self.macs,
            "params": self.params, "aliases": list(self.aliases), "precision": self.precision,
            "source": str(self.source) if self.source else None, "ranges": str(self.ranges) if self.ranges else None,
            "outputs": self.outputs,
            **({"width_index": self.width_index} if self.width_index is not None else {}),
        }


def _file_stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _export(source: ModelSource, widths: list[float], out_dir: Path, precision: str,
            progress: Any = None) -> list[dict]:
    try:
        from us3l.exporters import ExportConfig, run_export
    except ImportError as exc:
        raise BackendUnavailableError(f"the ONNX exporter is not available ({exc}); install us3l-deploy fully") from None
    extra: dict[str, Any] = {}
    if source.arch is not None:
        # Untrained network for latency planning: BN statistics and parity on random data do not
        # change latency, so keep those steps minimal (checkpoints get the exporter's defaults).
        known = {f.name for f in dataclasses.fields(ExportConfig)}
        extra = {k: v for k, v in (("bn_images", 32), ("parity_images", 2), ("int8_images", 32), ("gate_images", 8))
                 if k in known}
    cfg = ExportConfig(checkpoint=str(source.checkpoint) if source.checkpoint else None, arch=source.arch,
                       widths=tuple(widths), format="onnx", out_dir=str(out_dir), batch=None, snap=source.snap,
                       precision=precision, outputs=source.outputs, **extra)
    result = run_export(cfg, progress=progress)
    records = []
    for art in result.artifacts:
        records.append({
            "width": round_width(art.width), "path": str(Path(art.path).resolve()), "sha256": art.sha256,
            "input_shape": [d if isinstance(d, int) else 1 for d in art.input_shape],  # "batch" when dynamic
            "channels": art.channels, "macs": art.macs,
            "params": art.params, "aliases": [round_width(a) for a in art.aliases],
            "precision": art.precision, "stamp": _file_stamp(Path(art.path)),
            "source": str(Path(art.source).resolve()) if art.source else None,
            "ranges": str((Path(art.path).parent / art.calibration["ranges_file"]).resolve())
            if art.calibration and art.calibration.get("ranges_file") else None,
            "outputs": source.outputs,
        })
    return records


def prepare_artifacts(source: ModelSource, widths: Sequence[float], out_dir: Path, precision: str = "fp32",
                      table: Any = None, force: bool = False, progress: Any = None) -> list[BenchArtifact]:
    """Export (or reuse) one ONNX artifact per distinct configuration among ``widths``.

    Args:
        source: checkpoint or architecture.
        widths: requested widths (order kept; aliases collapse onto the first).
        out_dir: where the exporter writes (``<out>/artifacts``).
        precision: export precision.
        table: a :class:`us3l.benchmarks.lut.LatencyTable` remembering earlier exports (optional).
        force: re-export even when an unchanged artifact is recorded.
        progress: forwarded to the exporter.

    Returns:
        Artifacts in the order of their first requested width.

    Raises:
        BackendUnavailableError: the exporter package is missing.
    """
    source_key = source.key()  # file hash of a checkpoint: computed once per call
    wanted = [round_width(w) for w in widths]
    records: dict[float, dict] = {}
    missing: list[float] = []
    for w in wanted:
        rec = None if force or table is None else table.get_artifact(source_key, w, source.snap, precision,
                                                                      source.outputs)
        if rec and Path(rec["path"]).is_file() and _file_stamp(Path(rec["path"])) == rec.get("stamp"):
            records[w] = rec
        else:
            missing.append(w)
    if missing:
        log.info("exporting %d width(s) to ONNX", len(missing))
        for rec in _export(source, missing, out_dir / "artifacts", precision, progress):
            for w in [rec["width"], *rec["aliases"]]:
                if w in missing:
                    records[w] = rec
                    if table is not None:
                        table.put_artifact(source_key, w, source.snap, precision, rec, source.outputs)
    arts: list[BenchArtifact] = []
    seen: dict[str, BenchArtifact] = {}
    for w in wanted:
        rec = records.get(w)
        if rec is None:
            raise ConfigError(f"the exporter returned no artifact for width {format_width(w)}")
        if rec["sha256"] in seen:
            continue
        aliases = tuple(a for a in wanted if a != rec["width"] and records.get(a, {}).get("sha256") == rec["sha256"])
        width = rec["width"] if rec["width"] in wanted else w
        art = BenchArtifact(
            width=width, path=Path(rec["path"]), sha256=rec["sha256"], input_shape=tuple(rec["input_shape"]),
            channels=rec["channels"], macs=rec["macs"], params=rec["params"],
            aliases=tuple(a for a in aliases if a != width), precision=rec["precision"],
            source=Path(rec["source"]) if rec.get("source") else None,
            ranges=Path(rec["ranges"]) if rec.get("ranges") else None, outputs=rec.get("outputs", "features"),
            build_module=functools.partial(source.build_static, width),
        )
        seen[rec["sha256"]] = art
        arts.append(art)
    return arts
