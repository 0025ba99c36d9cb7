"""The SSL model as a composition: slimmable backbone + projector + predictor heads + EMA teacher.

Layout (docs/method.md §5):

- ``backbone``: a registry backbone with ``num_classes=0`` (returns pooled features);
- ``projector``: first layer reads the active slice of the features (``USLinear(slim_in=True)``;
  a plain ``Linear`` when the feature size does not change with width, e.g. MobileNetV2's 1280),
  then BN1d · ReLU · Linear · BN1d · ReLU · Linear (never slimmed);
- ``predictor``: BYOL / MoCo v3 main predictor (max width only); ``None`` for SimCLR-momentum;
- ``aux_predictor``: the auxiliary distillation head used only by sub-networks (BYOL's
  ``predictor_new``; SimCLR-momentum's and plain SimCLR's ``predictor``); present for ``us3l``
  and for the reference's ``naive`` configuration, ``None`` otherwise;
- ``proj_conv``: optional 1x1 ``USConv2d`` per distilled feature map (feature distillation; the
  distilled map is post-ReLU as in the reference, see :func:`distill_source`);
- ``teacher``: deep copy of backbone + projector, gradients off, always run at the teacher width
  (1.0 for US3L) with train-mode BN. It is excluded from :meth:`SSLModel.trainable_parameters`.
  The two naive baselines have none (plain SimCLR has no momentum network).

Names matter: the group regulariser skips parameters whose name contains ``teacher`` or
``proj_conv``, and those containing ``predictor`` at the maximum width.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn

from us3l.core.context import use_width
from us3l.core.errors import ConfigError
from us3l.core.layers import USConv2d, USLinear
from us3l.core.models import SlimmableNet, get_model
from us3l.core.models.mobilenet_v2 import USMobileNetV2
from us3l.core.models.resnet import BasicBlock, Bottleneck, USResNet

from .ema import deactivate_requires_grad

#: methods trained without an EMA teacher (plain SimCLR at the max width)
TEACHERLESS = ("naive", "naive-contrastive")


class Encoder(nn.Module):
    """Backbone followed by projector (the unit the EMA teacher copies)."""

    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone, self.projector = backbone, projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


def mlp_head(in_dim: int, hidden: int, out: int, first_bias: bool = True, mocov3: bool = False) -> nn.Sequential:
    """Linear · BN1d · ReLU · Linear (the predictor layout of docs/method.md §5.2).

    ``mocov3``: both linears without bias and a final ``BatchNorm1d(affine=False)`` (MoCo v3's
    predictor with ``last_bn``, docs/method.md §13).
    """
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden, bias=first_bias and not mocov3), nn.BatchNorm1d(hidden),
                               nn.ReLU(inplace=True), nn.Linear(hidden, out, bias=not mocov3)]
    if mocov3:
        layers.append(nn.BatchNorm1d(out, affine=False))
    return nn.Sequential(*layers)


def projector_head(backbone: SlimmableNet, hidden: int, out: int, ssl: str) -> nn.Sequential:
    """The 3-layer projector; its first layer follows the backbone's active feature slice.

    MoCo v3: every linear is bias-free and a ``BatchNorm1d(affine=False)`` ends the head.
    MobileNetV2: the first layer (the reference backbone's ``fc``) is initialised N(0, 0.01),
    bias 0, as the backbone initialises its linears.
    """
    mocov3 = ssl == "mocov3"
    feat = backbone.max_feature_dim
    lo = backbone.width_range[0]
    first: nn.Module
    if backbone.feature_dim(lo) != feat:
        first = USLinear(feat, hidden, bias=not mocov3, slim_in=True, slim_out=False)
    else:  # feature size independent of width (MobileNetV2 1280, ViT embedding)
        first = nn.Linear(feat, hidden, bias=not mocov3)
    if isinstance(backbone, USMobileNetV2):
        nn.init.normal_(first.weight, 0.0, 0.01)
        if first.bias is not None:
            nn.init.zeros_(first.bias)
    second_bias = ssl == "simclr_momentum"  # BYOL's middle Linear has no bias (docs/method.md §5.1 table), MoCo v3's neither
    layers: list[nn.Module] = [first, nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                               nn.Linear(hidden, hidden, bias=second_bias), nn.BatchNorm1d(hidden),
                               nn.ReLU(inplace=True), nn.Linear(hidden, out, bias=not mocov3)]
    if mocov3:
        layers.append(nn.BatchNorm1d(out, affine=False))
    return nn.Sequential(*layers)


class SSLModel(nn.Module):
    """Online network, heads and EMA teacher of one US3L (or baseline) run.

    Args:
        backbone: slimmable backbone built with ``num_classes=0``.
        ssl: ``"simclr_momentum"``, ``"byol"`` or ``"mocov3"``.
        method: ``"us3l"``, ``"naive"``, ``"naive-contrastive"`` or ``"single"`` (selects which heads exist).
        proj_hidden_dim / proj_out_dim / pred_hidden_dim: head sizes.
        distill_layers: backbone BN module names whose outputs are distilled (feature distillation).
        teacher_width: width the teacher always runs at.

    Examples:
        >>> from us3l.core.models import get_model
        >>> m = SSLModel(get_model("us_resnet_mini"), "simclr_momentum", "us3l", 64, 32, 64)
        >>> q1, q2, _ = m(torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16), width=0.5, head="aux")
        >>> q1.shape
        torch.Size([4, 32])
    """

    def __init__(self, backbone: SlimmableNet, ssl: str, method: str, proj_hidden_dim: int, proj_out_dim: int,
                 pred_hidden_dim: int, distill_layers: tuple[str, ...] = (), teacher_width: float = 1.0) -> None:
        super().__init__()
        self.ssl, self.method, self.teacher_width = ssl, method, float(teacher_width)
        self.backbone = backbone
        self.projector = projector_head(backbone, proj_hidden_dim, proj_out_dim, ssl)
        has_predictor = ssl in ("byol", "mocov3")
        mocov3 = ssl == "mocov3"
        self.predictor = (mlp_head(proj_out_dim, pred_hidden_dim, proj_out_dim, first_bias=False, mocov3=mocov3)
                          if has_predictor else None)
        self.aux_predictor = (mlp_head(proj_out_dim, pred_hidden_dim, proj_out_dim, first_bias=False, mocov3=mocov3)
                              if method in ("us3l", "naive") else None)
        self.distill_layers = tuple(distill_layers)
        for n in self.distill_layers:
            distill_source(backbone, n)  # validates the name early, with the list of valid ones
        self.proj_conv = nn.ModuleDict({_key(n): _proj_conv(_find(backbone, n)) for n in self.distill_layers}) \
            if self.distill_layers else None
        if method in TEACHERLESS:
            self.teacher = None  # plain SimCLR: no momentum network
        else:
            self.teacher = deactivate_requires_grad(Encoder(copy.deepcopy(self.backbone), copy.deepcopy(self.projector)))

    def online_encoder(self) -> Encoder:
        """A view (not a copy) of the online backbone + projector, parameter order = teacher's."""
        return Encoder(self.backbone, self.projector)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter the optimizer updates (the teacher's are excluded)."""
        return [p for n, p in self.named_parameters() if not n.startswith("teacher.")]

    def _slimmed(self) -> nn.ModuleList:
        parts = [self.backbone, self.projector] + ([self.proj_conv] if self.proj_conv is not None else [])
        return nn.ModuleList(parts)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, width: float, head: str = "none",
                regularizer=None, epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Online pass of both views at ``width`` (each view separately: per-view BN statistics).

        Everything that receives gradients happens here (so a DDP wrapper sees it), including the
        group-regularisation term when it is applied in its autograd form (``reg_mode="autograd"``;
        the trainer's default adds its gradient after backward instead).

        Args:
            x1, x2: the two augmented views.
            width: online width.
            head: ``"none"`` (projections), ``"predictor"`` (main predictor) or ``"aux"`` (aux head).
            regularizer: optional ``reg(model, width, epoch) -> Tensor`` returned as ``extras["reg"]``.
            epoch: current epoch (for the regulariser's schedule).

        Returns:
            ``(q1, q2, extras)``; ``extras`` holds ``"reg"`` and, with feature distillation,
            ``"feats"``: per distilled layer a ``(f1, f2)`` pair already mapped by ``proj_conv``.
        """
        extras: dict = {}
        names = self.distill_layers if head == "aux" else ()  # only sub-networks distill features
        with use_width(self._slimmed(), width), self._capture(self.backbone, names) as feats:
            z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
            if names:
                assert self.proj_conv is not None  # built whenever distill_layers is non-empty
                extras["feats"] = [tuple(self.proj_conv[_key(n)](f) for f in feats[n]) for n in names]
        if head == "predictor":
            assert self.predictor is not None, f"ssl {self.ssl!r} has no predictor"
            z1, z2 = self.predictor(z1), self.predictor(z2)
        elif head == "aux":
            assert self.aux_predictor is not None, f"method {self.method!r} has no aux predictor"
            z1, z2 = self.aux_predictor(z1), self.aux_predictor(z2)
        elif head != "none":
            raise ValueError(f"unknown head {head!r}; valid: none, predictor, aux")
        if regularizer is not None:
            extras["reg"] = regularizer(self, width, epoch)
        return z1, z2, extras

    @torch.no_grad()
    def teacher_forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Teacher projections ``(k1, k2)`` at the teacher width (train-mode BN, no gradients).

        Also returns the teacher's distilled feature maps as ``[(f1, f2), ...]`` (empty without
        feature distillation).
        """
        if self.teacher is None:
            raise ConfigError(f"this model has no teacher (method {self.method!r})")
        capture = self._capture(self.teacher.backbone, self.distill_layers)
        with use_width(self.teacher, self.teacher_width), capture as feats:
            k1, k2 = self.teacher(x1), self.teacher(x2)
        return k1, k2, [tuple(feats[n]) for n in self.distill_layers]

    @contextlib.contextmanager
    def _capture(self, backbone: nn.Module, names: tuple[str, ...]) -> Iterator[dict[str, list[torch.Tensor]]]:
        """Collect the distilled maps of the ``names`` layers (one entry per forward call) while inside.

        The map of each name is the post-ReLU tensor the reference ends up distilling
        (:func:`distill_source`); gradients flow through that ReLU.
        """
        store: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        handles = []
        for n in names:
            module, take = distill_source(backbone, n)
            handles.append(module.register_forward_hook(lambda _m, _i, out, n=n, take=take: store[n].append(take(out))))
        try:
            yield store
        finally:
            for h in handles:
                h.remove()


def distill_source(backbone: nn.Module, name: str) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """Where the distilled map of BN layer ``name`` is read: the module to hook and what to take.

    The reference hooks the BN and keeps its output tensor without a copy; the block's next
    in-place ops overwrite it before the loss reads it (docs/method.md §7.3). So the effective map is:

    - the last BN of a residual block (``bn2`` of a BasicBlock, ``bn3`` of a Bottleneck): the
      block output, after the residual add and the ReLU (hook the block itself);
    - any other BN of a block (``bn1``; ``bn2`` of a Bottleneck) and the stem ``bn1``:
      ``relu(bn(...))``, the in-place ReLU that follows it;
    - a downsample BN (``...downsample.1``): its own output (the residual add writes into the
      main branch, not into it).

    Raises:
        ConfigError: ``name`` is not one of these BN layers of a ResNet backbone.
    """
    modules = dict(backbone.named_modules())
    valid = _distillable(backbone, modules)
    if not valid:
        raise ConfigError(f"distill layer {name!r}: feature distillation is defined for ResNet backbones only "
                          f"(post-ReLU maps of their BN layers, docs/method.md §7.3), not {type(backbone).__name__}")
    if name not in valid:
        raise ConfigError(f"distill layer {name!r} is not in the backbone; valid BN layers: {', '.join(valid[:40])}")
    module = modules[name]
    parent_name, _, leaf = name.rpartition(".")
    parent = modules.get(parent_name)
    if isinstance(parent, (BasicBlock, Bottleneck)):
        if module is parent.last_bn():
            return parent, _same
        return module, torch.relu
    if leaf == "1" and parent_name.endswith("downsample"):
        return module, _same
    return module, torch.relu  # the stem's bn1


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _distillable(backbone: nn.Module, modules: dict[str, nn.Module]) -> list[str]:
    if not isinstance(backbone, USResNet):
        return []
    names = ["bn1"]
    for n, m in modules.items():
        if isinstance(m, (BasicBlock, Bottleneck)):
            bns = ["bn1", "bn2"] + (["bn3"] if isinstance(m, Bottleneck) else [])
            names += [f"{n}.{b}" for b in bns] + ([f"{n}.downsample.1"] if m.downsample is not None else [])
    return names


def _key(name: str) -> str:
    return name.replace(".", "__")


def _find(backbone: nn.Module, name: str) -> nn.BatchNorm2d:
    modules = dict(backbone.named_modules())
    found = modules.get(name)
    if not isinstance(found, nn.BatchNorm2d):  # distill_source has already refused any other name
        bns = [n for n, m in modules.items() if isinstance(m, nn.BatchNorm2d)]
        raise ConfigError(f"distill layer {name!r} is not in the backbone; valid BN layers: {', '.join(bns[:40])}")
    return found


def _proj_conv(bn: nn.BatchNorm2d) -> USConv2d:
    c = int(bn.num_features)
    return USConv2d(c, c, 1, bias=False, slim_in=True, slim_out=False)


def build_ssl_model(arch: str, arch_kwargs: dict, ssl: str, method: str, proj_hidden_dim: int, proj_out_dim: int,
                    pred_hidden_dim: int, distill_layers: tuple[str, ...] = (), teacher_width: float = 1.0) -> SSLModel:
    """Build the backbone from the registry (``num_classes=0``) and wrap it in :class:`SSLModel`."""
    kwargs = {k: v for k, v in dict(arch_kwargs).items() if k != "num_classes"}
    backbone = get_model(arch, num_classes=0, **kwargs)
    return SSLModel(backbone, ssl, method, proj_hidden_dim, proj_out_dim, pred_hidden_dim, distill_layers,
                    teacher_width)
