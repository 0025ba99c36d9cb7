"""SSL and distillation losses of US3L as small modules (docs/method.md §6, §7.3, §13).

Each loss takes scalar hyperparameters at construction (validated there), tensors in, and returns
a scalar tensor; none calls ``.item()``. Targets coming from the momentum teacher are detached
inside the loss, so callers cannot forget the stop-gradient.

Examples:
    >>> import torch
    >>> q1, q2, k1, k2 = (torch.randn(8, 16) for _ in range(4))
    >>> loss = MomentumInfoNCELoss(temperature=0.5)((q1, q2), (k1, k2))
    >>> loss.dim()
    0
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_temperature(temperature: float) -> float:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return float(temperature)


def _pair(x: tuple[Tensor, Tensor], what: str) -> tuple[Tensor, Tensor]:
    if not isinstance(x, (tuple, list)) or len(x) != 2:
        raise ValueError(f"{what} must be a pair (view 1, view 2)")
    return x[0], x[1]


def nt_xent(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """NT-Xent over ``X = [a; b]`` with the diagonal excluded (docs/method.md §6, ``ntx``).

    Rows ``k`` and ``B + k`` are each other's positives; every other row is a negative, including
    same-side pairs. Equals ``(1/2B) * sum_i -log(p_i / sum_{j != i} s_ij)``. No detaching here.
    """
    batch = a.shape[0]
    x = torch.cat([F.normalize(a, dim=1), F.normalize(b, dim=1)], dim=0)
    logits = x @ x.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * batch, dtype=torch.bool, device=x.device), float("-inf"))
    targets = torch.arange(2 * batch, device=x.device).roll(batch)
    return F.cross_entropy(logits, targets)


class CosineSimilarityLoss(nn.Module):
    """Symmetric cross-view negative cosine similarity (BYOL base loss and US3L distillation).

    ``L = 1/2 * [-mean_b cos(q1, k2) - mean_b cos(q2, k1)]`` with ``k`` detached (docs/method.md §6).
    """

    def forward(self, q: tuple[Tensor, Tensor], k: tuple[Tensor, Tensor]) -> Tensor:
        """Args: q: online outputs (view 1, view 2); k: teacher targets (view 1, view 2). Returns: scalar in [-1, 1]."""
        q1, q2 = _pair(q, "q")
        k1, k2 = _pair(k, "k")
        c12 = F.cosine_similarity(q1, k2.detach(), dim=1).mean()
        c21 = F.cosine_similarity(q2, k1.detach(), dim=1).mean()
        return -0.5 * (c12 + c21)


class MomentumInfoNCELoss(nn.Module):
    """InfoNCE of the online network against the momentum teacher (``InfoNCEv2_distill``, docs/method.md §6).

    ``L = 1/2 * [ntx(q1, sg(k2)) + ntx(q2, sg(k1))]``; negatives include online-online and
    momentum-momentum pairs; the gradient flows only through the online rows.

    Args:
        temperature: softmax temperature T (0.5 in every SimCLR-momentum config).
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)

    def forward(self, q: tuple[Tensor, Tensor], k: tuple[Tensor, Tensor]) -> Tensor:
        q1, q2 = _pair(q, "q")
        k1, k2 = _pair(k, "k")
        return 0.5 * (nt_xent(q1, k2.detach(), self.temperature) + nt_xent(q2, k1.detach(), self.temperature))


class InfoNCELoss(nn.Module):
    """Plain SimCLR NT-Xent between two online views (``InfoNCEv2``; the naive baseline, docs/method.md §6).

    Args:
        temperature: softmax temperature T.
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return nt_xent(z1, z2, self.temperature)


class MoCoV3Loss(nn.Module):
    """MoCo-v3 contrastive loss ``ctr(q1, k2) + ctr(q2, k1)``, ``ctr = 2T * CE(q k^T / T, arange)`` (docs/method.md §13).

    Args:
        temperature: T (0.2 in the ViT script).
        gather_distributed: all-gather the keys over the process group (MoCo v3 does); off by
            default so the loss runs on one CPU process.
    """

    def __init__(self, temperature: float = 0.2, gather_distributed: bool = False) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.gather_distributed = bool(gather_distributed)

    def _ctr(self, q: Tensor, k: Tensor) -> Tensor:
        q = F.normalize(q, dim=1)
        k = F.normalize(k.detach(), dim=1)
        offset = 0
        if self.gather_distributed:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                parts = [torch.empty_like(k) for _ in range(dist.get_world_size())]
                dist.all_gather(parts, k.contiguous())
                k, offset = torch.cat(parts, dim=0), q.shape[0] * dist.get_rank()
        logits = q @ k.t() / self.temperature
        labels = torch.arange(q.shape[0], device=q.device) + offset
        return F.cross_entropy(logits, labels) * (2.0 * self.temperature)

    def forward(self, q: tuple[Tensor, Tensor], k: tuple[Tensor, Tensor]) -> Tensor:
        q1, q2 = _pair(q, "q")
        k1, k2 = _pair(k, "k")
        return self._ctr(q1, k2) + self._ctr(q2, k1)


class FeatureDistillLoss(nn.Module):
    """Cross-view feature-map MSE between student and teacher (docs/method.md §6, §7.3).

    For each hooked layer ``l``: ``MSE(s_l[view1], sg(t_l[view2]))`` and ``MSE(s_l[view2], sg(t_l[view1]))``;
    the result is the mean over all ``2 * L`` terms. Student maps are expected to be already
    projected to the teacher's full channel count (``proj_conv``).
    """

    def forward(self, student: list[tuple[Tensor, Tensor]], teacher: list[tuple[Tensor, Tensor]]) -> Tensor:
        if len(student) != len(teacher) or not student:
            raise ValueError(f"need the same non-zero number of student and teacher layers, got {len(student)} and {len(teacher)}")
        terms = []
        for s, t in zip(student, teacher):
            s1, s2 = _pair(s, "student maps")
            t1, t2 = _pair(t, "teacher maps")
            terms.append(F.mse_loss(s1, t2.detach()))
            terms.append(F.mse_loss(s2, t1.detach()))
        return torch.stack(terms).mean()
