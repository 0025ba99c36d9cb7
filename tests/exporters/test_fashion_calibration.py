"""Export on Fashion-MNIST: calibration images and the sidecar's normalisation agree with training.

Grayscale is replicated into the 3-channel stem; the normalisation the sidecar records is the
dataset's (one value repeated per channel), and the calibration images are exactly the training
images normalised that way. Needs Debian's dataset-fashion-mnist (.ci/run installs it).
"""

from __future__ import annotations

import torch

from us3l.core.data import FASHION_MNIST_STATS, DatasetSpec, load_split, write_fashion_mnist_subset
from us3l.exporters.source import CalibrationSet


def test_calibration_images_and_recorded_normalisation_match_training(tmp_path):
    root = write_fashion_mnist_subset(tmp_path / "slice", 64, 16)
    spec = DatasetSpec("fashion-mnist", str(root))
    for calib in (CalibrationSet(None, spec.to_dict(), 28, 3, False, limit=32),  # the checkpoint's data
                  CalibrationSet(f"fashion-mnist:{root}", None, 28, 3, False, limit=32)):  # --calib-data name:root
        mean, std = FASHION_MNIST_STATS
        assert calib.normalization() == {"mean": list(mean), "std": list(std)}
        x = calib.images()
        assert x.shape == (32, 3, 28, 28) and x.is_contiguous()
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # gray replicated
        x01, _ = load_split(spec, "train", normalized=False)
        normalised = (x01[:, 0] - mean[0]) / std[0]
        # every calibration image is a training image normalised as recorded
        dist = torch.cdist(x[:, 0].flatten(1), normalised.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
        assert float(dist.min(dim=1).values.max()) < 1e-4
