"""One training iteration of US3L and of the two baselines (docs/method.md §7).

Read :func:`train_step` top to bottom. Per iteration the widths (widest first) are visited in
order; for ``method="us3l"``:

1. max width: update the EMA teacher once (before its forward), compute the teacher's
   full-width projections ``k1, k2`` without gradients, and the base SSL loss of the online max
   network against them (SimCLR-momentum InfoNCE, BYOL cosine through ``predictor``, or MoCo v3);
2. each sub-width: the online sub-network's projections go through ``aux_predictor`` and are
   distilled (cosine; MoCo v3: its contrastive loss) to the teacher targets of the *other* view,
   plus the optional feature distillation;
3. the group regulariser acts at every width: by default its gradient ``2 * Lambda * p`` is added
   to the parameter gradients after ``backward`` (:meth:`GroupRegularizer.add_grad_`, a few
   fused ``_foreach`` ops); ``reg_mode="autograd"`` keeps the reference form (the term joins the
   loss), which gives the same update and is kept for comparison;
4. gradients are zeroed before each width and the optimizer steps once per width (the
   reference). With ``accumulate=True`` gradients of all widths are summed and the optimizer
   steps once per iteration (the original US-Nets recipe).

``naive`` (the reference's naive configuration, docs/method.md §7.4): no teacher; the max width
takes plain SimCLR InfoNCE between its two online views, and every sub-width goes through the
auxiliary head and is distilled (cosine, cross-view) to the *detached online* max-width
projections of the same iteration (US-Net in-place distillation with a target that moves at every
step). ``naive-contrastive``: no teacher, no heads, online-vs-online InfoNCE at every width.
``single``: one fixed width, the base SSL loss against an EMA teacher of the same width
(individual training).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

import torch
from torch import nn

from us3l.core.errors import US3LError

from .ema import update_momentum
from .losses import CosineSimilarityLoss, FeatureDistillLoss, InfoNCELoss, MomentumInfoNCELoss, MoCoV3Loss
from .sampling import widths_for_iteration

if TYPE_CHECKING:
    from .ssl_model import SSLModel


class TrainingDivergedError(US3LError):
    """The loss became NaN or infinite."""


@dataclass
class Losses:
    """The loss modules of one run (scalar hyper-parameters only, docs/method.md §6).

    Attributes:
        base: the max-width SSL loss ``base((q1, q2), (k1, k2))`` (naive: ``base(z1, z2)``).
        distill: the sub-network loss against the teacher targets (None for baselines).
        feature: the feature-map distillation loss (None when off).
    """

    base: nn.Module
    distill: nn.Module | None = None
    feature: nn.Module | None = None


def build_losses(method: str, ssl: str, temperature: float, feature_distill: bool = False,
                 distributed: bool = False) -> Losses:
    """Pick the loss modules for ``method`` × ``ssl`` (MoCo v3 gathers keys across ranks under DDP)."""
    if method == "naive":  # reference: InfoNCEv2 at the max width, CosineSimilarity distillation below it
        return Losses(base=InfoNCELoss(temperature=temperature), distill=CosineSimilarityLoss())
    if method == "naive-contrastive":
        return Losses(base=InfoNCELoss(temperature=temperature))
    if ssl == "simclr_momentum":
        base: nn.Module = MomentumInfoNCELoss(temperature=temperature)
    elif ssl == "byol":
        base = CosineSimilarityLoss()
    else:
        base = MoCoV3Loss(temperature=temperature, gather_distributed=distributed)
    if method == "single":
        return Losses(base=base)
    distill = base if ssl == "mocov3" else CosineSimilarityLoss()  # docs/method.md §13: MoCo v3 sub-nets reuse it
    return Losses(base=base, distill=distill, feature=FeatureDistillLoss() if feature_distill else None)


@dataclass
class StepParts:
    """What stays fixed across iterations.

    Attributes:
        model: the module called for online passes (a DDP wrapper, or the raw model).
        raw_model: the unwrapped :class:`~us3l.trainer.ssl_model.SSLModel` (teacher, EMA, heads).
        optimizer: updates ``raw_model.trainable_parameters()`` only.
        scaler: AMP gradient scaler (``enabled=False`` off CUDA: a pass-through).
        losses: see :class:`Losses`.
        method: ``"us3l"``, ``"naive"``, ``"naive-contrastive"`` or ``"single"``.
        regularizer: a :class:`~us3l.trainer.group_reg.GroupRegularizer` (or, with
            ``reg_mode="autograd"``, any ``reg(model, width, epoch) -> Tensor``), or None.
        accumulate: one optimizer step per iteration instead of per width.
        amp: run forwards under ``torch.autocast`` (CUDA only).
        reg_mode: ``"grad"`` (add the regulariser's gradient after backward) or ``"autograd"``
            (the regulariser joins the loss, the reference form).
        channels_last: feed the views in ``torch.channels_last`` memory format.
    """

    model: nn.Module
    raw_model: SSLModel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    losses: Losses
    method: str
    regularizer: Callable[..., torch.Tensor] | None = None
    accumulate: bool = False
    amp: bool = False
    reg_mode: str = "grad"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.reg_mode not in REG_MODES:
            raise ValueError(f"unknown reg_mode {self.reg_mode!r}; valid: {', '.join(REG_MODES)}")


REG_MODES = ("grad", "autograd")


class GradRegularizer(Protocol):
    """What ``reg_mode="grad"`` calls on the regulariser (:class:`~us3l.trainer.group_reg.GroupRegularizer`)."""

    def add_grad_(self, model: nn.Module, width: float, epoch: int, scale: torch.Tensor | None = None) -> None: ...

    def value(self, model: nn.Module, width: float, epoch: int) -> torch.Tensor: ...


def iteration_widths(rng: random.Random, epoch: int, epochs: int, method: str, n: int, lo: float, hi: float,
                     sandwich: bool, schedule: str, single_width: float) -> list[float]:
    """The widths of one iteration, widest first.

    No collective: under DDP every rank draws from an identically seeded ``rng`` (the reference's
    rule, docs/method.md §15.12) and :func:`us3l.trainer.sampling.check_width_agreement` compares a digest
    of the drawn lists across ranks once per epoch.
    """
    if method == "single":
        return [float(single_width)]
    return widths_for_iteration(rng, epoch, epochs, n, lo, hi, sandwich=sandwich, schedule=schedule)


def train_step(parts: StepParts, x1: torch.Tensor, x2: torch.Tensor, widths: list[float], epoch: int,
               ema_momentum: float, reg_value: bool = True) -> dict[str, torch.Tensor]:
    """Run one iteration over ``widths`` (descending) and return detached loss tensors.

    No ``.item()`` here: the caller syncs at its log interval. ``"finite"`` is a bool tensor that
    is False if any loss of the iteration was NaN/inf (see :func:`check_finite`). ``"reg"`` (the
    regulariser's value summed over the widths) is present when a regulariser is set and, in
    the gradient form, ``reg_value`` is True (computing it costs a few extra ops per width).
    """
    raw, opt, scaler = parts.raw_model, parts.optimizer, parts.scaler
    device_type = x1.device.type
    # StepParts' contract: in the gradient form the regulariser is a GroupRegularizer; the type of
    # ``regularizer`` cannot follow ``reg_mode``.
    grad_reg = (cast(GradRegularizer, parts.regularizer)
                if parts.regularizer is not None and parts.reg_mode == "grad" else None)
    graph_reg = parts.regularizer if parts.reg_mode == "autograd" else None
    if parts.channels_last:
        x1, x2 = x1.contiguous(memory_format=torch.channels_last), x2.contiguous(memory_format=torch.channels_last)
    names = ("loss_base", "loss_distill", "loss_feat") + (("reg",) if parts.regularizer is not None and
                                                          (reg_value or grad_reg is None) else ())
    stats = {k: torch.zeros((), device=x1.device) for k in names}
    finite = torch.ones((), dtype=torch.bool, device=x1.device)
    targets: tuple = ()
    if parts.accumulate:
        opt.zero_grad(set_to_none=True)
    for i, width in enumerate(widths):
        if not parts.accumulate:
            opt.zero_grad(set_to_none=True)
        if i == 0 and raw.teacher is not None:
            # EMA once per iteration, before the teacher forward (docs/method.md §7.1 step 2).
            update_momentum(raw.online_encoder(), raw.teacher, ema_momentum)
            with torch.autocast(device_type, enabled=parts.amp):
                targets = raw.teacher_forward(x1, x2)
        head = "none" if (i == 0 or parts.method == "naive-contrastive") else "aux"
        if i == 0 and raw.predictor is not None:
            head = "predictor"
        with torch.autocast(device_type, enabled=parts.amp):
            q1, q2, extras = parts.model(x1, x2, width, head, graph_reg, epoch)
        q = (_full(q1), _full(q2))
        if parts.method == "naive-contrastive":
            loss = parts.losses.base(*q)
            stats["loss_base" if i == 0 else "loss_distill"] += loss.detach()
        elif parts.method == "naive" and i == 0:
            # online vs online InfoNCE; its detached projections are this iteration's sub-width targets
            # (computed before the max width's optimizer step, as the reference's teacher branch)
            loss = parts.losses.base(*q)
            stats["loss_base"] += loss.detach()
            targets = (q[0].detach(), q[1].detach())
        elif parts.method == "naive":
            assert parts.losses.distill is not None
            loss = parts.losses.distill(q, targets)
            stats["loss_distill"] += loss.detach()
        elif i == 0:
            loss = parts.losses.base(q, (_full(targets[0]), _full(targets[1])))
            stats["loss_base"] += loss.detach()
        else:
            assert parts.losses.distill is not None, "sub-widths need a distillation loss (build_losses gives one)"
            loss = parts.losses.distill(q, (_full(targets[0]), _full(targets[1])))
            stats["loss_distill"] += loss.detach()
            if parts.losses.feature is not None:
                feat = parts.losses.feature(extras["feats"], targets[2])
                stats["loss_feat"] += feat.detach()
                loss = loss + feat
        if "reg" in extras:
            stats["reg"] += extras["reg"].detach()
            total = loss + extras["reg"]
        else:
            total = loss
        finite &= torch.isfinite(total.detach())
        scaler.scale(total).backward()
        if grad_reg is not None:
            # the loss scale as a tensor (no host sync); re-read per width: update() may change it
            scale = scaler.scale(torch.ones((), device=x1.device)) if scaler.is_enabled() else None
            grad_reg.add_grad_(raw, width, epoch, scale)
            if reg_value:
                stats["reg"] += grad_reg.value(raw, width, epoch)
        if not parts.accumulate:
            scaler.step(opt)
            scaler.update()
    if parts.accumulate:
        scaler.step(opt)
        scaler.update()
    n_sub = max(len(widths) - 1, 1)
    stats["loss_distill"] /= n_sub
    stats["loss_feat"] /= n_sub
    stats["finite"] = finite
    return stats


def _full(t: torch.Tensor) -> torch.Tensor:
    """AMP outputs (half / bfloat16) to float32 for the loss; float32 and float64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def check_finite(finite: torch.Tensor, epoch: int, step: int) -> None:
    """Raise :class:`TrainingDivergedError` if ``finite`` is False (a CPU-GPU sync point)."""
    if not bool(finite):
        raise TrainingDivergedError(
            f"loss became NaN/inf by epoch {epoch} step {step}; lower --lr, disable --amp or check the data"
        )
