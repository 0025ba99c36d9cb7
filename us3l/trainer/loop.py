"""The training loop: ``run_training(cfg) -> checkpoint path``.

Data (in memory) → two kornia views on the training device → :func:`us3l.trainer.step.train_step`
per iteration → per-epoch cosine LR, collapse check, metrics (``metrics.jsonl`` + TensorBoard),
atomic checkpoint with the complete resume state. ``resume`` continues exactly: two epochs in one
run and one epoch + resume + one epoch give identical weights on a deterministic device.

Under ``torchrun`` every process joins the group (gloo on CPU, NCCL on CUDA), trains on its shard
of each epoch's permutation, and only rank 0 writes files. Every rank draws the same widths from
an identically seeded generator with no per-iteration collective; a digest of the drawn lists is
compared across ranks once per epoch (:func:`us3l.trainer.runtime.check_width_agreement`).

GPU settings: ``cudnn.benchmark`` on CUDA (widths are rounded to multiples of 8 channels, so the
set of conv shapes it tunes for is finite); DDP with ``broadcast_buffers=False`` (BN runs on batch
statistics during SSL; no buffer is read, so nothing needs broadcasting) and
``gradient_as_bucket_view=True``; optional ``channels_last``. ``torch.compile`` is not used:
with changing widths Inductor recompiled for 8 of the first 12 distinct widths of
``us_resnet_mini`` and hit Dynamo's recompile limit (then runs eager), at ~75 s per compile on
CPU (``perf/compile_widths.py``); Dynamo alone stays at 3 graphs, so the cost is code
generation per channel configuration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from us3l.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from us3l.core.data import DatasetSpec, dataset_stats, default_image_size, is_grayscale, load_split, resize_images
from us3l.core.errors import CheckpointError, ConfigError, DataError
from us3l.core.files import atomic_write_text
from us3l.core.heartbeat import stage
from us3l.core.images import list_split
from us3l.core.threads import AutoThreads

from . import pipeline, runtime
from .augment import asymmetric_pair, build_augment, two_views
from .collapse import measure_collapse, report_collapse
from .config import RESUME_IGNORED, TrainConfig
from .config_file import save_resolved
from .ema import cosine_momentum
from .group_reg import GroupRegularizer
from .monitor import KnnMonitor
from .ssl_model import build_ssl_model
from .sampling import width_digest
from .step import StepParts, build_losses, check_finite, iteration_widths, train_step

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], None]  # (steps done, total steps, status text)
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"


class Trainer:
    """One run: builds data, model, optimizer from ``cfg``; :meth:`fit` trains and checkpoints.

    Attributes:
        raw_model: the unwrapped :class:`~us3l.trainer.ssl_model.SSLModel` (checkpointing, slicing).
        model: the DDP wrapper under ``torchrun``, else ``raw_model``.
    """

    def __init__(self, cfg: TrainConfig, progress: ProgressFn | None = None,
                 on_start: Callable[[int, int], None] | None = None) -> None:
        self.cfg, self.progress, self.on_start = cfg, progress, on_start
        check_out_dir(Path(cfg.out_dir), cfg.resume, cfg.overwrite)
        self.dist = runtime.init_distributed(cfg.device)
        self.device = runtime.resolve_device(cfg.device, self.dist.local_rank)
        # CPU threads: --threads N as given; 0 = one per CPU other processes leave idle, re-checked while training
        self.threads = AutoThreads(cfg.threads, apply=self.device.type == "cpu")
        self._status = ""  # the last logged step's status text (shown on every step's progress)
        with stage("loading data"):
            self._load_data(cfg)
        with stage("building the model" + (" and resuming" if cfg.resume else "")):
            self._build(self.cfg)  # resolved by _load_data (augmentation, GroupReg)

    def _load_data(self, cfg: TrainConfig) -> None:
        self.out_dir = Path(cfg.out_dir)
        self.spec = DatasetSpec(cfg.data, cfg.data_root, cfg.image_size)
        # "auto" augmentation and the method's regulariser become explicit: the checkpoint and
        # config.toml record what ran, and --resume compares like with like
        self.cfg = cfg = cfg.resolved(gray=cfg.augmentation == "auto" and is_grayscale(self.spec))
        self.image_size = size = default_image_size(self.spec)
        self.batch = runtime.per_process_batch(cfg.batch_size, cfg.global_batch, self.dist.world)
        self.stream: pipeline.TrainStream | None = None
        self.bad_images = pipeline.BadImages(cfg.on_bad_image, str(cfg.data_root))
        if pipeline.is_streamed(self.spec):  # image files: decoded and cropped by loader processes
            files = list_split(pipeline._root(self.spec), "train")
            self.images01: torch.Tensor | None = None
            n_train = len(files)
            self.held_out = pipeline.held_out_batch(self.spec, cfg.collapse_batch).to(self.device)
        else:
            # Native resolution in memory; the random resized crop produces `size` (CIFAR at 224 px
            # would otherwise hold ~30 GB).
            self.images01, _ = load_split(self.spec, "train", normalized=False, resize=False)
            n_train = len(self.images01)
            held_out, _ = load_split(self.spec, "test", normalized=True, resize=False)
            self.held_out = resize_images(held_out[: cfg.collapse_batch], size).to(self.device)
        self.steps_per_epoch = epoch_steps(n_train // self.dist.world, self.batch, cfg.drop_last)
        if self.steps_per_epoch < 1:
            raise DataError(f"{n_train} training images cannot fill one batch of {self.batch} "
                            f"per process on {self.dist.world} process(es); lower --batch-size")
        if cfg.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps_per_epoch)
        if self.images01 is None:
            self.workers = pipeline.resolve_workers(cfg.workers)
            self.stream = pipeline.TrainStream(files, size, (cfg.crop_scale_min, 1.0), cfg.seed, self.dist.rank,
                                               self.dist.world, self.batch, self.steps_per_epoch, cfg.drop_last,
                                               self.workers, cfg.prefetch, pin=self.device.type == "cuda")
            log.info("streaming %d images from %s with %d loader process(es)", n_train, files.source, self.workers)

    def _build(self, cfg: TrainConfig) -> None:
        size = self.image_size
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # finitely many conv shapes: widths round to 8 channels
        mean, std = dataset_stats(self.spec)
        runtime.seed_everything(cfg.seed)  # same initial weights on every rank
        self.augment: torch.nn.Module
        self.augment2: torch.nn.Module | None = None
        geometric = self.stream is None  # the loader processes crop and flip image files themselves
        if cfg.views == "asymmetric":
            pair = asymmetric_pair(size, mean, std, scale=(cfg.crop_scale_min, 1.0), geometric=geometric)
            self.augment, self.augment2 = pair[0].to(self.device), pair[1].to(self.device)
        else:
            self.augment = build_augment(cfg.augmentation, size, mean, std, (cfg.crop_scale_min, 1.0), cfg.blur,
                                         geometric).to(self.device)
        arch_kwargs = {"width_range": [cfg.width_min, cfg.width_max], "input_size": size, **cfg.arch_kwargs}
        teacher_width = cfg.single_width if cfg.method == "single" else cfg.width_max
        self.raw_model = build_ssl_model(cfg.arch, arch_kwargs, cfg.ssl, cfg.method, cfg.proj_hidden_dim,
                                         cfg.proj_out_dim, cfg.pred_hidden_dim, cfg.distill_layers,
                                         teacher_width).to(self.device)
        if cfg.channels_last:
            # nn.Module.to takes memory_format at run time (torch/nn/modules/module.py); its stub omits it
            self.raw_model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        params = self.raw_model.trainable_parameters()
        wd = 0.0 if cfg.use_group_reg else cfg.weight_decay  # GroupReg replaces weight decay (docs/method.md §9)
        if cfg.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                                                    weight_decay=wd)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=wd)
        self.regularizer = GroupRegularizer(cfg.reg_lambda, cfg.group_reg_alpha, cfg.group_reg_bins,
                                            cfg.group_reg_warmup, cfg.epochs, width_max=cfg.width_max) \
            if cfg.use_group_reg else None
        amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp)
        self.model: torch.nn.Module = self.raw_model
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # Sub-widths use the aux head, the max width the predictor: some parameters are unused per step.
            # BN uses batch statistics during SSL, so no buffer needs broadcasting before each forward.
            self.model = DDP(self.raw_model, device_ids=ids, find_unused_parameters=True, broadcast_buffers=False,
                             gradient_as_bucket_view=True)
        losses = build_losses(cfg.method, cfg.ssl, cfg.loss_temperature, cfg.feature_distill, self.dist.distributed)
        self.parts = StepParts(self.model, self.raw_model, self.optimizer, self.scaler, losses, cfg.method,
                               self.regularizer, cfg.accumulate, amp, channels_last=cfg.channels_last)
        # Identically seeded on every rank and private to the trainer (no augmentation draws from it);
        # check_width_agreement verifies once per epoch that the ranks stayed in step.
        self.width_rng = random.Random(cfg.seed)
        self.start_epoch, self.global_step = 0, 0
        self.restored_metrics: list[dict] = []  # metrics records a resumed checkpoint carries
        self.monitor: KnnMonitor | None = None
        if cfg.eval_every and self.dist.is_main:  # learning curves (rank 0 writes the metrics)
            lo, hi = self._probe_widths()[0], self._probe_widths()[-1]
            self.monitor = KnnMonitor(self.spec, [lo, hi], cfg.eval_images, cfg.eval_bank, device=self.device,
                                      workers=cfg.workers if self.stream is not None else 0)
        runtime.seed_everything(cfg.seed + self.dist.rank)  # augmentation differs per rank
        if cfg.resume:
            self._restore()

    # ------------------------------------------------------------------ checkpointing
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def _save(self, epoch: int, records: list[dict] | None = None) -> None:
        """Write the checkpoint of ``epoch``; ``records`` are the metrics of the epochs it covers
        since the last one, kept inside it so a run killed between the checkpoint and its metrics
        lines gets them back on ``--resume`` (:class:`_MetricsWriter`)."""
        rng_states = runtime.gather_rng_states(self.dist)  # collective: every rank takes part
        if not self.dist.is_main:
            return
        state = self.raw_model.state_dict()
        training = {
            "heads": {k: v.detach().cpu().clone() for k, v in state.items() if not k.startswith("backbone.")},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "lr": self.optimizer.param_groups[0]["lr"],
            "rng": rng_states,
            "width_rng": runtime.python_rng_state(self.width_rng),
            "global_step": self.global_step,
            "world_size": self.dist.world,
            "metrics": list(records or []),
        }
        ckpt = Checkpoint.from_model(self.raw_model.backbone, method=self.cfg.method, epoch=epoch,
                                     train_config=self.cfg.to_dict(), dataset=self.spec.to_dict(), training=training)
        save_checkpoint(ckpt, self.checkpoint_path)
        save_resolved(dataclasses.replace(self.cfg, resume=False), self.out_dir)  # --resume reads it back
        log.info("saved %s (epoch %d)", self.checkpoint_path, epoch)

    def _restore(self) -> None:
        found = resume_visibility(runtime.gather_objects(self.dist, self.checkpoint_path.is_file()), self.checkpoint_path)
        if not found:
            raise nothing_to_resume(self.out_dir)
        ckpt = load_checkpoint(self.checkpoint_path)
        if ckpt.training is None:
            raise CheckpointError(f"{self.checkpoint_path} has no training state (a deployable export?); cannot resume")
        saved = TrainConfig.from_dict(dict(ckpt.train_config)).to_dict()
        mine = self.cfg.to_dict()
        diff = [f"{k}: {saved[k]!r} -> {mine[k]!r}" for k in mine if k not in RESUME_IGNORED and saved[k] != mine[k]]
        if diff:
            raise ConfigError(f"cannot resume {self.checkpoint_path} with different options ({'; '.join(diff)}); "
                              "rerun with the original options or a new --out")
        t = ckpt.training
        state = {**{f"backbone.{k}": v for k, v in ckpt.model.items()}, **t["heads"]}
        self.raw_model.load_state_dict(state)
        self.optimizer.load_state_dict(t["optimizer"])
        self.scaler.load_state_dict(t["scaler"])
        runtime.set_python_rng_state(self.width_rng, t["width_rng"])
        if len(t["rng"]) == self.dist.world:
            runtime.set_global_rng_state(t["rng"][self.dist.rank])
        else:
            log.warning("resuming on %d process(es) from a %d-process run: augmentation RNG reseeded",
                        self.dist.world, len(t["rng"]))
            runtime.seed_everything(self.cfg.seed + 7919 * ckpt.epoch + self.dist.rank)
        self.start_epoch, self.global_step = ckpt.epoch, int(t["global_step"])
        self.restored_metrics = [r for r in t.get("metrics") or [] if isinstance(r, dict)]
        log.info("resumed from %s at epoch %d", self.checkpoint_path, ckpt.epoch)

    # ------------------------------------------------------------------ training
    def fit(self, until_epoch: int | None = None) -> Path:
        """Train the remaining epochs; returns the checkpoint path (on every rank).

        Args:
            until_epoch: stop after this many completed epochs (the schedule still spans
                ``cfg.epochs``; a later ``resume`` run continues from there).
        """
        cfg = self.cfg
        stop = cfg.epochs if until_epoch is None else min(int(until_epoch), cfg.epochs)
        if cfg.overwrite and self.dist.is_main:
            clear_run(self.out_dir)
        writer = (_MetricsWriter(self.out_dir, self.start_epoch, cfg.tensorboard, self.restored_metrics)
                  if self.dist.is_main else None)
        pending: list[dict] = []  # records of epochs not yet covered by a written checkpoint
        total = cfg.epochs * self.steps_per_epoch
        try:
            if self.on_start is not None and self.dist.is_main:
                self.on_start(self.start_epoch, cfg.epochs)
            for epoch in range(self.start_epoch, stop):
                record = self._train_epoch(epoch, total)
                with stage("collapse check"):
                    stats = measure_collapse(self.raw_model.online_encoder(), self.held_out, self._probe_widths(),
                                             cfg.collapse_std_ratio)
                record["collapse"] = [s.to_dict() for s in stats]
                if self.monitor is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                    with runtime.preserved_rng():  # the curve must not change the run it measures
                        t_knn = time.perf_counter()
                        record["knn"] = self.monitor(self.raw_model.backbone)
                        record["knn_s"] = round(time.perf_counter() - t_knn, 2)
                pending.append(record)
                if (epoch + 1) % cfg.save_every == 0 or epoch + 1 in (cfg.epochs, stop):
                    with stage("saving the checkpoint"):
                        self._save(epoch + 1, pending)
                    # metrics after the checkpoint: a record never names an epoch that no checkpoint
                    # holds (a resumed run restarts after the checkpoint's epoch anyway); the
                    # checkpoint carries them too, for a kill between the two
                    if writer is not None:
                        for done in pending:
                            writer.write(done)
                    pending.clear()
                report_collapse(stats, epoch + 1, cfg.fail_on_collapse)
        finally:
            if writer is not None:
                writer.close()
            if self.dist.owns_group and dist.is_initialized():
                dist.destroy_process_group()
        return self.checkpoint_path

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _probe_widths(self) -> list[float]:
        c = self.cfg
        if c.method == "single":
            return [c.single_width]
        return sorted({round(c.width_min + i * (c.width_max - c.width_min) / 3, 6) for i in range(4)})

    def _train_epoch(self, epoch: int, total: int) -> dict:
        cfg = self.cfg
        lr = runtime.lr_at(epoch, cfg.epochs, cfg.lr, cfg.lr_warmup_epochs)
        self._set_lr(lr)
        sums: dict[str, torch.Tensor] = {}
        n_widths, n_images, n_reg, t0, shown, digest = 0, 0, 0, time.perf_counter(), {}, b""
        all_finite = torch.ones((), dtype=torch.bool, device=self.device)
        self.raw_model.train()
        batches, wait, steps = self._epoch_batches(epoch), 0.0, 0
        for step in range(self.steps_per_epoch):
            if cfg.lr_per_iteration:
                lr = runtime.lr_at_iteration(epoch + step / self.steps_per_epoch, cfg.epochs, cfg.lr,
                                             cfg.lr_warmup_epochs)
                self._set_lr(lr)
            t_wait = time.perf_counter()
            got = next(batches, None)  # the loader's share of the step: the data-wait fraction
            wait += time.perf_counter() - t_wait
            if got is None:  # bad images skipped: this rank's shard ran out early
                break
            if isinstance(got, tuple):  # two views cropped by the loader: photometric part here
                v1, v2 = self.augment(got[0]), (self.augment2 or self.augment)(got[1])
            else:
                v1, v2 = two_views(self.augment, got, self.augment2)
            steps += 1
            widths = iteration_widths(self.width_rng, epoch, cfg.epochs, cfg.method, cfg.num_widths, cfg.width_min,
                                      cfg.width_max, cfg.sandwich, cfg.schedule, cfg.single_width)
            digest = width_digest(widths, digest)
            m = (cosine_momentum(self.global_step, total, cfg.ema_momentum, 1.0) if cfg.ema_cosine
                 else cfg.ema_momentum)
            last = step + 1 == self.steps_per_epoch
            log_now = (step + 1) % cfg.log_interval == 0 or last
            # the regulariser's value costs extra ops: measured on logged iterations only
            out = train_step(self.parts, v1, v2, widths, epoch, m, reg_value=log_now)
            all_finite &= out.pop("finite")
            if "reg" in out:
                n_reg += 1
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v
            n_widths += len(widths)
            n_images += len(v1)
            self.global_step += 1
            if log_now:
                check_finite(all_finite, epoch + 1, step + 1)  # note: a CPU-GPU sync point
                shown = {k: float(v) / (n_reg if k == "reg" else step + 1) for k, v in sums.items()}
                spent = time.perf_counter() - t0
                ips = n_images * self.dist.world / spent
                self._status = (f"loss {shown['loss_base']:.3f} distill {shown['loss_distill']:.3f} {ips:.0f} img/s "
                                f"wait {wait / spent:.0%}")
            if self.progress is not None and self.dist.is_main:  # every step: the count never lags
                self.progress(epoch * self.steps_per_epoch + step + 1, total,
                              f"ep {epoch + 1}/{cfg.epochs}" + (f" {self._status}" if self._status else ""))
            self.threads.tick()
        if 0 < steps < self.steps_per_epoch:  # the shard ran out early: report the steps taken
            check_finite(all_finite, epoch + 1, steps)
            shown = {k: float(v) / (n_reg if k == "reg" else steps) for k, v in sums.items() if k != "reg" or n_reg}
        elapsed = time.perf_counter() - t0
        runtime.check_width_agreement(self.dist, digest, epoch + 1)
        images = n_images * self.dist.world
        record = {"epoch": epoch + 1, "lr": lr, "steps": steps, "global_step": self.global_step,
                  "widths_per_iter": n_widths / max(steps, 1), **shown,
                  "images_per_s": images / elapsed, "data_wait": wait / elapsed, "epoch_time_s": elapsed}
        if self.stream is not None:
            record["bad_images"] = self.bad_images.count
        return record

    def _epoch_batches(self, epoch: int) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of ``epoch`` on the device: one ``[0, 1]`` batch (in-memory data, both
        views made by kornia) or a pair of views cropped by the loader processes (image files)."""
        if self.stream is None:
            assert self.images01 is not None
            order = runtime.shard_indices(len(self.images01), epoch, self.cfg.seed, self.dist.rank, self.dist.world)
            pin = self.device.type == "cuda"
            for step in range(self.steps_per_epoch):
                batch = self.images01[order[step * self.batch:(step + 1) * self.batch]]
                yield (batch.pin_memory() if pin else batch).to(self.device, non_blocking=True)
            return
        previous: dict | None = None
        for item in self.stream.epoch(epoch):
            self.bad_images.record(item["bad"], self.stream.describe)
            if len(item["images"]) < 2:  # batch-norm and contrastive negatives need two images:
                if previous is None:  # every rank must take the same number of steps (DDP)
                    raise DataError(f"a batch of {self.stream.describe(item['bad'][0][0]) if item['bad'] else 'images'}"
                                    " and its neighbours holds fewer than 2 readable images; remove the bad files")
                item = previous  # repeat the last good batch rather than desynchronise the ranks
            previous = item
            yield pipeline.views_on_device(item, self.device)


RUN_FILES = (CHECKPOINT_NAME, METRICS_NAME, "tb")


def nothing_to_resume(out_dir: Path) -> ConfigError:
    """The one line for ``--resume`` where no run was saved."""
    where = "does not exist" if not out_dir.exists() else f"holds no {CHECKPOINT_NAME}"
    return ConfigError(f"--resume: {out_dir} {where}, so there is nothing to resume; drop --resume to start a new run "
                       "there")


def check_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to replace an earlier run in ``out_dir`` unless told to resume or overwrite it.

    Raises:
        ConfigError: ``out_dir`` holds a run (a checkpoint or metrics) and neither ``resume`` nor
            ``overwrite`` is set; ``resume`` where no checkpoint was saved (one process; under
            ``torchrun`` the ranks agree first, in ``Trainer._restore``); or it cannot be written
            (a file, read-only, no permission).
    """
    from us3l.core.files import check_writable_dir

    check_writable_dir(out_dir)
    if resume and not overwrite and runtime.launch_rank() == 0 and int(os.environ.get("WORLD_SIZE", "1")) <= 1 \
            and not (out_dir / CHECKPOINT_NAME).is_file():
        raise nothing_to_resume(out_dir)
    if resume or overwrite:
        return
    found = [name for name in (CHECKPOINT_NAME, METRICS_NAME) if (out_dir / name).exists()]
    if found:
        raise ConfigError(f"{out_dir} already holds a training run ({', '.join(found)}); pass --resume to continue it, "
                          "--overwrite to replace it, or choose another --out")


def clear_run(out_dir: Path) -> None:
    """Remove the files of an earlier run (checkpoint, metrics, TensorBoard logs) before ``overwrite``."""
    import shutil

    for name in RUN_FILES:
        target = out_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def epoch_steps(images_per_process: int, batch: int, drop_last: bool) -> int:
    """Iterations per epoch: full batches, plus the last smaller one unless ``drop_last``.

    A last batch of a single image is dropped all the same (batch-norm statistics and
    contrastive negatives need at least two).
    """
    full, rest = divmod(images_per_process, batch)
    return full + (1 if not drop_last and rest >= 2 else 0)


def resume_visibility(seen: list[bool], path: Path) -> bool:
    """Whether every rank can resume from ``path`` (``seen[r]``: rank r sees the file).

    Raises:
        ConfigError: some ranks see it and others do not (``--out`` is not on a shared file
            system): they would silently train from different states.
    """
    if all(seen):
        return True
    if any(seen):
        missing = ", ".join(str(r) for r, s in enumerate(seen) if not s)
        raise ConfigError(f"--resume: rank(s) {missing} cannot see {path}; with several nodes, --out must be a "
                          "folder every node shares (NFS or similar) so all ranks resume from the same state")
    return False


class _MetricsWriter:
    """Per-epoch records to ``metrics.jsonl`` (rewritten up to the resume epoch) and TensorBoard."""

    def __init__(self, out_dir: Path, start_epoch: int, tensorboard: bool, restored: Sequence[dict] = ()) -> None:
        """``restored``: the records a resumed checkpoint carries; those whose epochs the file lacks
        (a kill after the checkpoint, before its metrics lines) are written back."""
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / METRICS_NAME
        kept, have = [], set()
        if self.path.is_file():  # drop records of epochs the resumed run will redo
            for line in self.path.read_text().splitlines():
                try:
                    epoch = json.loads(line).get("epoch", 0)
                except (json.JSONDecodeError, AttributeError):
                    continue
                if epoch <= start_epoch:
                    kept.append(line)
                    have.add(epoch)
        missing = sorted((r for r in restored if r.get("epoch") not in have), key=lambda r: r.get("epoch", 0))
        for record in missing:
            log.info("metrics of epoch %s restored from the checkpoint", record.get("epoch"))
            kept.append(json.dumps(record))
        if self.path.is_file() or missing:
            atomic_write_text(self.path, "".join(k + "\n" for k in kept))
        # else the file appears with the first record: a run that fails before its first
        # checkpoint leaves no metrics file (and so no "existing run" for the next one)
        if start_epoch == 0 and (out_dir / "tb").is_dir():
            import shutil  # a fresh run (checked by check_out_dir): logs of a run that never checkpointed

            shutil.rmtree(out_dir / "tb")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except ImportError:  # the default install has no tensorboard: metrics.jsonl is the log (said with -v)
                log.info("tensorboard is not installed (pip install 'us3l-deploy[tensorboard]'); metrics go to %s only",
                         self.path)

    def write(self, record: dict) -> None:
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:  # a full disk: never leave half a record
            with contextlib.suppress(OSError):
                os.truncate(self.path, size)
            raise
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(f"train/{k}", v, record["epoch"])
            for w, acc in record.get("knn", {}).items():
                self.tb.add_scalar(f"knn/w{w}", acc, record["epoch"])
            for s in record.get("collapse", []):
                self.tb.add_scalar(f"collapse/std_ratio_w{s['width']:g}", s["std_ratio"], record["epoch"])
                self.tb.add_scalar(f"collapse/eff_rank_w{s['width']:g}", s["eff_rank"], record["epoch"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def run_training(cfg: TrainConfig, progress: ProgressFn | None = None,
                 on_start: Callable[[int, int], None] | None = None) -> Path:
    """Train per ``cfg`` and return the checkpoint path.

    Args:
        cfg: the run configuration (see :class:`~us3l.trainer.config.TrainConfig`).
        progress: optional ``fn(steps_done, total_steps, status)`` called every step (rank 0); the
            status text (losses, throughput) is refreshed at the log interval.
        on_start: optional ``fn(start_epoch, epochs)`` called once before the first epoch (rank 0):
            where this invocation starts (``start_epoch > 0`` on resume; ``== epochs`` when the
            run is already complete and nothing is trained).

    Raises:
        ConfigError / DataError / CheckpointError: bad options, data or resume state.
        TrainingDivergedError: the loss became NaN/inf.
        CollapseError: collapse detected with ``fail_on_collapse``.

    Examples:
        >>> from us3l.trainer.config import TrainConfig
        >>> path = train(TrainConfig(epochs=1, batch_size=64, max_steps_per_epoch=2, out_dir="/tmp/run"))
    """
    out = Path(cfg.out_dir)
    created = not out.exists()
    try:
        return Trainer(cfg, progress, on_start).fit()
    except BaseException:
        # A run that fails before its first checkpoint leaves nothing behind in a folder it created
        # (its config.toml, an empty tb/); a folder that holds a checkpoint stays, for --resume.
        if created and out.is_dir() and not (out / CHECKPOINT_NAME).exists() and runtime.launch_rank() == 0:
            shutil.rmtree(out, ignore_errors=True)
        raise
