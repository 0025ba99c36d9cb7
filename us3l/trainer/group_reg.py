"""Group regularization: width-aware weight decay that replaces SGD weight decay (docs/method.md §9).

``R(w, epoch) = sum_p sum(Lambda_p * p**2)`` over the trainable parameters. For conv weights
(4-D) and 1-D parameters the leading dimension is split into ``bins`` groups of channels; group
``i`` (0 = the first channels, used by every sub-network) gets ``lambda_i``, so later channels,
used only by wide networks, are decayed less. 2-D weights (linears) and any other rank get a
uniform ``lambda``. There is no 1/2 factor: ``lam = wd / 2`` reproduces SGD weight decay.

Coefficients per bin (integer epoch, warm-up ``W``, total epochs ``E``):

- ``epoch < W``: ``lam`` for every bin;
- linear mode: ``lam * (1 - alpha_t * i)``; exp mode: ``lam * alpha_t ** i``;
- ``alpha_t = alpha * (epoch - W) / (E // 2 - W)`` while ``epoch < E // 2``, else ``alpha``.

Binning (reproduces the reference): bin size ``C // bins``, the last bin takes the remainder;
a dimension with fewer than ``bins`` channels has bin size 0 and falls entirely into the last bin.

Two equivalent ways to apply it:

- :meth:`GroupRegularizer.forward` builds ``R`` as an autograd term (the reference form; about
  four small ops per tensor forward and as many backward, at every width step);
- :meth:`GroupRegularizer.add_grad_` adds its gradient ``2 * Lambda * p`` straight into ``p.grad``
  after ``backward`` with a few ``torch._foreach_*`` calls (times the AMP loss scale), and
  :meth:`GroupRegularizer.value` computes ``R`` without a graph when it is to be logged. The
  trainer uses this form; both give the same SGD update (tests/trainer/test_group_reg.py).
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor, nn

MODES = ("linear", "exp")


class GroupRegularizer(nn.Module):
    """Width-aware L2 regularizer with per-channel-group coefficients (``GroupReg``).

    Args:
        lam: base coefficient ``lambda`` (= weight decay / 2; 5e-5 in the SimCLR recipes).
        alpha: final per-bin decrement (0.05).
        bins: number of channel groups ``B`` (8).
        warmup_epochs: epochs of uniform ``lambda`` before the ramp starts (``W``).
        total_epochs: training length ``E``; the ramp ends at ``E // 2`` (default: 400, the CIFAR recipes).
        mode: "linear" (used by every recipe) or "exp".
        width_max: the max width; at this width names containing "predictor" are skipped (the max
            network's own predictor is regularised only by sub-network steps, as in the reference).
        exclude: parameters whose name contains any of these substrings are never regularised
            (the EMA teacher and the feature-distillation projections).

    Examples:
        >>> reg = GroupRegularizer(lam=5e-5, total_epochs=400)
        >>> [round(c / 5e-5, 3) for c in reg.coefficients(300)][:3]
        [1.0, 0.95, 0.9]
    """

    def __init__(self, lam: float, alpha: float = 0.05, bins: int = 8, warmup_epochs: int = 0,
                 total_epochs: int = 400, mode: str = "linear", width_max: float = 1.0,
                 exclude: tuple[str, ...] = ("teacher", "proj_conv")) -> None:
        super().__init__()
        if not (math.isfinite(lam) and lam >= 0):
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        if int(bins) < 1:
            raise ValueError(f"bins must be >= 1, got {bins!r}")
        if int(warmup_epochs) < 0 or int(total_epochs) < 1:
            raise ValueError(f"need warmup_epochs >= 0 and total_epochs >= 1, got {warmup_epochs!r}, {total_epochs!r}")
        if mode not in MODES:
            raise ValueError(f"unknown group-regularization mode {mode!r}; valid: {', '.join(MODES)}")
        self.lam, self.alpha, self.bins = float(lam), float(alpha), int(bins)
        self.warmup_epochs, self.total_epochs, self.mode = int(warmup_epochs), int(total_epochs), mode
        self.width_max, self.exclude = float(width_max), tuple(exclude)
        self._masks: dict[tuple, Tensor] = {}
        self._mask_epoch: int | None = None
        self._plans: dict[tuple, _GradPlan] = {}

    def alpha_at(self, epoch: int) -> float:
        """The ramped ``alpha_t`` of ``epoch`` (0 during warm-up)."""
        if epoch < self.warmup_epochs:
            return 0.0
        half = self.total_epochs // 2
        if epoch < half:  # implies half > warmup_epochs, so no division by zero
            return self.alpha * (epoch - self.warmup_epochs) / (half - self.warmup_epochs)
        return self.alpha

    def coefficients(self, epoch: int) -> list[float]:
        """Per-bin coefficients ``lambda_0 .. lambda_{B-1}`` for ``epoch``."""
        if epoch < self.warmup_epochs:
            return [self.lam] * self.bins
        a = self.alpha_at(epoch)
        if self.mode == "linear":
            return [self.lam * (1.0 - a * i) for i in range(self.bins)]
        return [self.lam * a**i for i in range(self.bins)]

    def bin_index(self, channels: int) -> Tensor:
        """Bin of each of ``channels`` leading-dimension entries (last bin takes the remainder)."""
        size = channels // self.bins
        if size == 0:  # reference quirk: fewer channels than bins -> everything in the last bin
            return torch.full((channels,), self.bins - 1, dtype=torch.long)
        return torch.clamp(torch.arange(channels) // size, max=self.bins - 1)

    def mask(self, param: Tensor, epoch: int) -> Tensor:
        """The coefficient tensor ``Lambda_p`` (broadcastable to ``param``) for ``epoch``.

        4-D and 1-D parameters are binned along dim 0 (output channels); others get a uniform
        ``lambda`` (a 0-D tensor). Masks are cached per (shape, device, dtype) within an epoch.
        """
        if param.dim() not in (1, 4):
            return torch.tensor(self.lam, dtype=param.dtype, device=param.device)
        if self._mask_epoch != epoch:
            self._masks.clear()
            self._mask_epoch = epoch
        key = (tuple(param.shape), param.device, param.dtype)
        cached = self._masks.get(key)
        if cached is None:
            coeffs = torch.tensor(self.coefficients(epoch), dtype=torch.float64)
            values = coeffs[self.bin_index(param.shape[0])].to(device=param.device, dtype=param.dtype)
            cached = values.view(-1, 1, 1, 1) if param.dim() == 4 else values
            self._masks[key] = cached
        return cached

    def included(self, name: str, width: float) -> bool:
        """Whether parameter ``name`` is regularised at ``width``."""
        if any(pattern in name for pattern in self.exclude):
            return False
        return not ("predictor" in name and abs(width - self.width_max) < 1e-9)

    def forward(self, model: nn.Module, width: float, epoch: int) -> Tensor:
        """``sum_p sum(Lambda_p * p**2)`` over ``model``'s trainable, included parameters (full tensors).

        Args:
            model: the whole SSL model (online network, heads, teacher; the teacher is excluded).
            width: the width of the current step (decides the predictor skip).
            epoch: the integer epoch (decides the coefficients).

        Returns:
            A scalar tensor (0 if nothing is regularised).
        """
        total: Tensor | None = None
        for name, p in model.named_parameters():
            if not p.requires_grad or not self.included(name, width):
                continue
            term = (self.mask(p, epoch) * p.square()).sum()
            total = term if total is None else total + term
        if total is None:
            first = next(model.parameters(), None)
            return torch.zeros((), device=first.device if first is not None else None)
        return total

    # ------------------------------------------------------------------ gradient form

    def _plan(self, model: nn.Module, width: float, epoch: int) -> _GradPlan:
        """The parameter lists and ``2 * Lambda`` tensors of ``(model, width class, epoch)`` (cached)."""
        at_max = abs(width - self.width_max) < 1e-9
        key = (id(model), at_max, epoch)
        plan = self._plans.get(key)
        if plan is not None and plan.owner() is not model:  # a new model reusing a freed model's id
            plan = None
        if plan is None:
            if any(k[2] != epoch for k in self._plans):
                self._plans.clear()  # coefficients change per epoch
            plan = _GradPlan(model)
            for name, p in model.named_parameters():
                if not p.requires_grad or not self.included(name, width):
                    continue
                if p.dim() in (1, 4):
                    plan.binned.append(p)
                    # materialised to the full shape: same-shape lists take the fused foreach path on CUDA
                    plan.masks2.append((2.0 * self.mask(p, epoch)).expand_as(p).contiguous())
                else:
                    plan.uniform.append(p)
            plan.lam2 = 2.0 * self.lam
            self._plans[key] = plan
        return plan

    @torch.no_grad()
    def add_grad_(self, model: nn.Module, width: float, epoch: int, scale: Tensor | None = None) -> None:
        """Add ``d R / d p = 2 * Lambda_p * p`` (times ``scale``) to every included ``p.grad``.

        Call it after ``backward`` and before the optimizer step; the result equals back-propagating
        :meth:`forward` together with the loss. A parameter without a gradient (unused by this
        width's loss) gets the regulariser's gradient alone, as in the autograd form.

        Args:
            model: the whole SSL model (unwrapped; same parameter names as for :meth:`forward`).
            width: the width of the step (decides the predictor skip).
            epoch: the integer epoch (decides the coefficients).
            scale: the AMP loss scale as a 0-d tensor (``scaler.scale(ones)``), None without AMP.
                A tensor, not a float, so no device-to-host sync is needed.
        """
        plan = self._plan(model, width, epoch)
        binned_grads, uniform_grads = _grads(plan.binned), _grads(plan.uniform)
        if plan.binned:
            masks = plan.masks2 if scale is None else torch._foreach_mul(plan.masks2, scale)
            torch._foreach_addcmul_(binned_grads, plan.binned, masks)
        if plan.uniform:
            if scale is None:
                torch._foreach_add_(uniform_grads, plan.uniform, alpha=plan.lam2)
            else:
                torch._foreach_add_(uniform_grads, torch._foreach_mul(plan.uniform, scale * plan.lam2))

    @torch.no_grad()
    def value(self, model: nn.Module, width: float, epoch: int) -> Tensor:
        """``R(w, epoch)`` as a detached scalar (what :meth:`forward` returns, without a graph)."""
        plan = self._plan(model, width, epoch)
        total = torch.zeros((), device=plan.device(model))
        if plan.binned:
            weighted = torch._foreach_mul(plan.binned, plan.masks2)  # 2 * Lambda * p
            torch._foreach_mul_(weighted, plan.binned)  # 2 * Lambda * p**2 >= 0, so |.|_1 is the sum
            total = total + 0.5 * torch.stack(torch._foreach_norm(weighted, 1)).sum()
        if plan.uniform:
            total = total + self.lam * torch.stack(torch._foreach_norm(plan.uniform, 2)).square().sum()
        return total


def _grads(params: list[Tensor]) -> list[Tensor]:
    """The ``.grad`` of each parameter, zeros put in first where it has none (unused by this width's loss)."""
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    return grads


class _GradPlan:
    """Parameters of one width class: binned (1-D / 4-D, with ``2 * Lambda``) and uniform ones."""

    def __init__(self, model: nn.Module) -> None:
        self.owner = weakref.ref(model)
        self.binned: list[Tensor] = []
        self.masks2: list[Tensor] = []
        self.uniform: list[Tensor] = []
        self.lam2 = 0.0

    def device(self, model: nn.Module) -> torch.device | None:
        for p in self.binned + self.uniform:
            return p.device
        first = next(model.parameters(), None)
        return first.device if first is not None else None
