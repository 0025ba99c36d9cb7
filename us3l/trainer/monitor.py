"""Learning curves during SSL training: a cheap kNN every few epochs (``--eval-every N``).

The reference keeps no online monitor (docs/method.md §11). Ours measures, every ``N`` epochs, the
weighted kNN accuracy (k = 20, cosine, T = 0.07, as ``us3l eval``) at the smallest and the largest
trained width on fixed images:

- queries: the first ``eval_images`` images of the held-out split (test / val), never trained on;
- bank: ``eval_bank`` training images drawn once with a fixed seed, with their labels;
- BN: a copy of the online backbone has its statistics recalibrated at each width on the bank's
  first batches (the training network itself is not touched: it keeps no running statistics).

The numbers join the epoch's record in ``metrics.jsonl`` (``"knn": {"0.25": 0.71, "1.0": 0.78}``)
and TensorBoard (``knn/w0.25``). They are a curve to compare runs and methods by, not the final
evaluation: ``us3l eval`` uses the whole splits.
"""

from __future__ import annotations

import copy
import logging
import time

import torch
from torch import nn

from us3l.core.bn import calibrate_bn
from us3l.core.data import DatasetSpec
from us3l.core.errors import DataError
from us3l.core.width import format_width

from .pipeline import EvalStream, stream_num_classes
from .probes import KNN_TEMPERATURE, extract_stream, knn_accuracy

log = logging.getLogger(__name__)
MONITOR_K = 20
CALIB_IMAGES = 2048


class KnnMonitor:
    """kNN accuracy of a backbone at a few widths on fixed held-out images.

    Args:
        spec: the training data (its held-out split gives the queries).
        widths: widths to measure (the trainer passes the smallest and the largest).
        n_queries / n_bank: held-out query images and training bank images (capped by the splits).
        batch_size / workers / device: inference batch, loader processes for image files, device.
        seed: the bank's draw.

    Raises:
        DataError: unlabelled data, or a split that is missing or empty.
    """

    def __init__(self, spec: DatasetSpec, widths: list[float], n_queries: int = 1000, n_bank: int = 5000,
                 batch_size: int = 256, workers: int | None = 0, device: torch.device | str = "cpu",
                 seed: int = 0) -> None:
        train = EvalStream(spec, "train", batch_size, workers)
        test = EvalStream(spec, "test", batch_size, workers)
        if not (train.labelled and test.labelled):
            raise DataError("--eval-every needs labelled data (a kNN learning curve); this data set is unlabelled")
        if len(train) < 2 or len(test) < 1:
            raise DataError(f"--eval-every needs training and held-out images; found {len(train)} and {len(test)}")
        self.widths = sorted({float(w) for w in widths})
        self.device = torch.device(device)
        self.queries = test.subset(torch.arange(min(int(n_queries), len(test))))
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        self.bank = train.subset(order[: min(int(n_bank), len(train))])
        self.calib = self.bank.subset(torch.arange(min(len(self.bank), CALIB_IMAGES)))
        self.n_classes = stream_num_classes(spec)
        self.k = MONITOR_K

    def describe(self) -> dict:
        """The protocol (stored with the curve)."""
        return {"queries": len(self.queries), "bank": len(self.bank), "k": self.k, "temperature": KNN_TEMPERATURE,
                "widths": self.widths, "calib_images": len(self.calib)}

    @torch.no_grad()
    def __call__(self, backbone: nn.Module) -> dict[str, float]:
        """kNN top-1 per width (keys: :func:`format_width`) of a copy of ``backbone``."""
        t0 = time.perf_counter()
        model = copy.deepcopy(backbone).to(self.device)
        out = {}
        for w in self.widths:
            calibrate_bn(model, self.calib.images(), w, device=self.device)
            f_bank, y_bank = extract_stream(model, self.bank, w, self.device, bank=True)
            f_q, y_q = extract_stream(model, self.queries, w, self.device, bank=True)
            out[format_width(w)] = knn_accuracy(f_bank, y_bank, f_q, y_q, self.k, KNN_TEMPERATURE, self.n_classes)
        log.info("kNN monitor %s (%.1fs)", {k: round(v, 4) for k, v in out.items()}, time.perf_counter() - t0)
        return out
