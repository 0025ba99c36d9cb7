"""Run an exported classifier on image files with exactly the preprocessing it records.

The artifact's facts come from its sidecar (``NAME.json`` beside it) or, for an ONNX file without
one, from its own ``metadata_props`` (``us3l.preprocess``, ``us3l.classes``, ``us3l.outputs``).
Images are decoded and preprocessed by :func:`us3l.core.preprocess.load_image` (numpy + Pillow),
run in ONNX Runtime (``.onnx``) or TensorRT (``.engine`` / ``.plan``, where TensorRT and a GPU
exist; imported only then), and turned into the top-k classes with their names and probabilities.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from us3l.core.errors import ConfigError, DataError

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
CLASSIFIER_OUTPUTS = ("logits", "probs")


def artifact_info(path: str | os.PathLike) -> dict[str, Any]:
    """``{"format", "outputs", "classes", "preprocess", "input_name", "batch"}`` of an artifact.

    Raises:
        ConfigError: missing file, or neither a sidecar nor ONNX metadata says how to feed it.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"artifact {p} does not exist; valid: an .onnx or .engine file written by 'us3l export'")
    sidecar = p.with_name(p.name[: -len(p.suffix)] + ".json") if p.suffix else p.with_suffix(".json")
    data: dict[str, Any] | None = None
    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict) or data.get("artifact") != p.name:
            data = None
    if data is not None:
        shape = (data.get("input") or {}).get("shape") or []
        out = data.get("output") or {}
        return {"format": data.get("format") or ("trt" if p.suffix in ENGINE_SUFFIXES else "onnx"),
                "outputs": out.get("kind") or ("logits" if data.get("head") else "features"),
                "classes": list(data.get("classes") or []), "preprocess": data.get("preprocess"),
                "input_name": (data.get("input") or {}).get("name", "input"),
                "batch": shape[0] if shape and isinstance(shape[0], int) else None, "width": data.get("width"),
                "aliases": list(data.get("aliases") or []),
                "switchable": (data.get("switchable") or {}).get("index")}
    if p.suffix in ENGINE_SUFFIXES:
        raise ConfigError(f"engine {p.name} has no sidecar {sidecar.name}; an engine carries no preprocessing record")
    from us3l.core.checks import check_onnx_file

    check_onnx_file(p)  # a truncated or foreign file: one line naming it
    import onnx

    model = onnx.load(str(p), load_external_data=False)
    props = {m.key: m.value for m in model.metadata_props}
    if "us3l.preprocess" not in props:
        raise ConfigError(f"{p.name} records no preprocessing (no sidecar, no us3l.preprocess metadata); "
                          "export it again with this version of us3l")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    from .switchable import switchable_table

    return {"format": "onnx", "outputs": props.get("us3l.outputs", "features"), "switchable": switchable_table(model),
            "aliases": [float(a) for a in props.get("us3l.aliases", "").split(",") if a],
            "classes": json.loads(props.get("us3l.classes", "[]")), "preprocess": json.loads(props["us3l.preprocess"]),
            "input_name": model.graph.input[0].name, "batch": dims[0].dim_value or None if dims else None,
            "width": float(props["us3l.width"]) if "us3l.width" in props else None}


def artifact_runner(path: Path, info: dict[str, Any], threads: int = 0,
                    width: float | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A function running the artifact on float32 NCHW batches (its first output); a switchable
    file at ``width`` (:func:`check_width`).

    Raises:
        BackendUnavailableError: onnxruntime or TensorRT missing (one line naming the fix).
        ConfigError: a width the artifact does not hold (one line listing those it holds).
    """
    from .onnx_exporter import batched_runner

    index = check_width(path, info, width)
    if index is not None:
        from .switchable import switchable_runner

        return switchable_runner(path, index, info.get("batch"), threads)

    if info["format"] == "trt" or path.suffix in ENGINE_SUFFIXES:
        from .trt_exporter import engine_runner, import_tensorrt

        trt = import_tensorrt()
        return engine_runner(trt, path.read_bytes(), info.get("input_name", "input"), int(info.get("batch") or 1))
    from .onnx_exporter import ort_session

    sess = ort_session(path, threads=threads)
    name = sess.get_inputs()[0].name
    return batched_runner(lambda x: np.asarray(sess.run(None, {name: x})[0], dtype=np.float32), info.get("batch"))


def check_width(path: Path, info: dict[str, Any], width: float | None) -> int | None:
    """The ``width_index`` to feed a switchable artifact at ``width`` (None for a one-width file,
    whose width, or an alias of it, ``width`` must then be when given).

    Raises:
        ConfigError: a switchable file without ``width``, or a width the artifact does not hold
            (one line listing those it holds).
    """
    from us3l.core.width import format_width

    table = info.get("switchable")
    if table:
        from .switchable import held_widths, index_for

        if width is None:
            held = ", ".join(format_width(w) for w in held_widths(table))
            raise ConfigError(f"{path.name} is a switchable file holding widths {held}; choose one with --width")
        return index_for(table, width, path.name)
    if width is not None and info.get("width") is not None:
        own = [float(info["width"]), *map(float, info.get("aliases") or [])]
        if not any(abs(width - w) < 1e-9 for w in own):
            raise ConfigError(f"{path.name} holds no width {format_width(width)}; it holds "
                              f"{', '.join(format_width(w) for w in sorted(own))}")
    return None


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_images(artifact: str | os.PathLike, images: list[Path], top_k: int = 5, batch_size: int = 64,
                   on_bad_image: str = "skip", threads: int = 0, width: float | None = None,
                   ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, str]]]:
    """``(artifact info, one record per readable image, one record per skipped file)``.

    Each record is ``{"image", "top": [{"index", "name", "prob"}...], "logits"?}`` sorted by
    probability; a skipped file is ``{"image", "reason"}``. Every file is decoded by the one decoder
    (:func:`us3l.core.preprocess.load_image`), as the training and evaluation loaders decode it.

    Args:
        threads: ONNX Runtime's intra-op threads (0: auto, one per CPU other processes leave idle).
        on_bad_image: ``skip`` (an unreadable, truncated or decompression-bomb file is listed in
            the third item and the others are still classified) or ``fail`` (the first one raises).
        width: the width to run a switchable file (``us3l export --switchable``) at (required for
            one, and one it holds); a one-width file must be at that width when it is given.

    Raises:
        ConfigError: not a classifier artifact, a bad ``top_k`` or policy, or a width the artifact
            does not hold.
        DataError: ``fail`` and a bad file (one line naming it), or no readable image at all.
    """
    from us3l.core.images import BAD_IMAGE_POLICIES, BadImageError
    from us3l.core.preprocess import load_image

    if top_k < 1:
        raise ConfigError(f"--top-k {top_k} is invalid; valid: a positive integer")
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ConfigError(f"--on-bad-image {on_bad_image!r} is invalid; valid: {', '.join(BAD_IMAGE_POLICIES)}")
    path = Path(artifact)
    info = artifact_info(path)
    if info["outputs"] not in CLASSIFIER_OUTPUTS:
        raise ConfigError(f"{path.name} outputs {info['outputs']}, not class scores; export a classifier with "
                          "'us3l export TASK_CKPT --outputs logits' (or probs)")
    if not info.get("preprocess"):
        raise DataError(f"{path.name} records no preprocessing (exported without a known dataset); export it from a "
                        "task checkpoint")
    from us3l.core.threads import choose_threads

    run = artifact_runner(path, info, width=width, threads=choose_threads(threads).threads)
    if info.get("switchable"):
        info = {**info, "width": width}
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for start in range(0, len(images), batch_size):
        chunk, inputs = [], []
        for f in images[start:start + batch_size]:
            try:
                inputs.append(load_image(f, info["preprocess"]))
            except BadImageError as exc:
                if on_bad_image == "fail":
                    raise DataError(f"bad image {f}: {exc.reason}; rerun with --on-bad-image skip to skip such "
                                    "files") from None
                skipped.append({"image": str(f), "reason": exc.reason})
                continue
            chunk.append(f)
        if not chunk:
            continue
        out = run(np.ascontiguousarray(np.stack(inputs), dtype=np.float32))
        probs = out if info["outputs"] == "probs" else softmax(out.astype(np.float64))
        for f, row, p in zip(chunk, out, probs):
            order = np.argsort(-p, kind="stable")[:top_k]
            names = info["classes"]
            rec: dict[str, Any] = {"image": str(f), "top": [
                {"index": int(i), "name": names[int(i)] if int(i) < len(names) else str(int(i)), "prob": float(p[i])}
                for i in order]}
            if info["outputs"] == "logits":
                rec["logits"] = [float(v) for v in row]
            records.append(rec)
    if not records:
        raise DataError(f"no readable image among {len(images)} file(s); first: {skipped[0]['image']}: "
                        f"{skipped[0]['reason']}" if skipped else "no image files given")
    return info, records, skipped
