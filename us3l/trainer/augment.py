"""Two-view SSL augmentation done in batches on the training device with kornia.

The MoCo-v2-style symmetric pipeline of docs/method.md §12.2: RandomResizedCrop(size, scale (0.2, 1)),
ColorJitter(0.4, 0.4, 0.4, 0.1) with p = 0.8, RandomGrayscale p = 0.2, GaussianBlur (sigma in
[0.1, 2]) with p = 0.5 only for ImageNet-size inputs (>= 96 px; none on CIFAR), horizontal flip,
Normalize. Every image of the batch gets its own random parameters; each call draws a new view.
Input: images in [0, 1] (``load_split(..., normalized=False)``) on any device.

MoCo v3 (docs/method.md §13) uses the BYOL-style asymmetric pair instead: both views get
ColorJitter(0.4, 0.4, 0.2, 0.1) p = 0.8 and RandomGrayscale p = 0.2; view 1 is always blurred and
never solarized, view 2 is blurred with p = 0.1 and solarized (threshold 0.5) with p = 0.2
(:func:`asymmetric_pair`).

Grey images (digits, Fashion-MNIST, grey folders: the channel replicated three times) get
:class:`GrayAugment` (``augmentation = "gray"``): on them saturation and hue jitter and
RandomGrayscale are identities, so half of the color pipeline does nothing. The gray views are
RandomResizedCrop (the configured scale; the recipes use (0.2, 1)), a small affine (rotation
within ±15°, translation up to 10 % of the side, p = 0.5), horizontal flip, brightness and
contrast jitter (0.4, p = 0.8), mild Gaussian noise (σ = 0.03 of the [0, 1] range, p = 0.5, the
same noise in the three channels so a grey image stays grey), Normalize, then random erasing
(p = 0.25, 2–20 % of the area, filled with the dataset mean).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

BLUR_MIN_SIZE = 96


def _kornia_augmentation() -> Any:
    """``kornia.augmentation``: heavy, and part of the [train] extra, so imported only where views are
    built; a deploy-only install gets one line naming the extra."""
    try:
        import kornia.augmentation as K
    except ImportError:
        from us3l.core.errors import BackendUnavailableError

        raise BackendUnavailableError("training augmentation needs kornia, which a deploy-only install leaves out; "
                                      "pip install 'us3l-deploy[train]'") from None
    return K


class SSLAugment(nn.Module):
    """One random SSL view of a batch per call.

    Args:
        image_size: output side in pixels (crops are resized to it).
        mean / std: per-channel normalisation applied last.
        blur: apply Gaussian blur with p = 0.5; None = only when ``image_size >= 96``.
        scale: RandomResizedCrop area range.
        blur_p: blur probability, overrides ``blur`` when given (0 = no blur).
        solarize_p: probability of solarizing (pixels >= 0.5 become 1 - x) after the blur.
        saturation: ColorJitter saturation strength (0.4 MoCo v2, 0.2 MoCo v3 / BYOL).
        geometric: include RandomResizedCrop and the flip; ``False`` when the input pipeline's workers
            already cropped and flipped the views (image files, :mod:`us3l.trainer.pipeline`).

    Examples:
        >>> aug = SSLAugment(16, (0.5,) * 3, (0.25,) * 3)
        >>> aug(torch.rand(4, 3, 16, 16)).shape
        torch.Size([4, 3, 16, 16])
    """

    def __init__(self, image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 blur: bool | None = None, scale: tuple[float, float] = (0.2, 1.0), blur_p: float | None = None,
                 solarize_p: float = 0.0, saturation: float = 0.4, geometric: bool = True) -> None:
        super().__init__()
        K = _kornia_augmentation()

        if int(image_size) < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size!r}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {scale!r}")
        self.image_size, self.scale = int(image_size), (float(scale[0]), float(scale[1]))
        if blur_p is None:
            blur_p = 0.5 if (self.image_size >= BLUR_MIN_SIZE if blur is None else bool(blur)) else 0.0
        if not (0 <= blur_p <= 1 and 0 <= solarize_p <= 1):
            raise ValueError(f"probabilities must lie in [0, 1], got blur_p={blur_p!r}, solarize_p={solarize_p!r}")
        self.blur_p, self.solarize_p = float(blur_p), float(solarize_p)
        self.blur = self.blur_p > 0
        self.geometric = bool(geometric)
        ops: list[nn.Module] = [K.RandomResizedCrop((self.image_size, self.image_size), scale=(scale[0], scale[1]))] \
            if self.geometric else []
        ops += [
            K.ColorJitter(0.4, 0.4, saturation, 0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
        ]
        if self.blur:
            kernel = max(3, int(0.1 * self.image_size) // 2 * 2 + 1)  # ~10 % of the side, odd
            ops.append(K.RandomGaussianBlur((kernel, kernel), sigma=(0.1, 2.0), p=self.blur_p))
        if self.solarize_p > 0:
            ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=self.solarize_p))  # threshold exactly 0.5
        ops += [K.RandomHorizontalFlip()] if self.geometric else []
        ops += [
            K.Normalize(mean=torch.tensor(mean, dtype=torch.float32), std=torch.tensor(std, dtype=torch.float32)),
        ]
        self.ops = nn.Sequential(*ops)

    @torch.no_grad()
    def forward(self, x01: Tensor) -> Tensor:
        """Args: x01: ``(N, 3, H, W)`` float images in [0, 1]. Returns: one normalised view ``(N, 3, S, S)``."""
        if x01.dim() != 4 or x01.shape[1] != 3:
            raise ValueError(f"expected a (N, 3, H, W) batch, got shape {tuple(x01.shape)}")
        return self.ops(x01.float())


class _GrayNoise(nn.Module):
    """Additive Gaussian noise shared by the channels (a grey image stays grey), per image with probability ``p``."""

    def __init__(self, std: float, p: float) -> None:
        super().__init__()
        self.std, self.p = float(std), float(p)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        on = (torch.rand(n, 1, 1, 1, device=x.device) < self.p).to(x.dtype)
        return x + on * self.std * torch.randn(n, 1, h, w, device=x.device, dtype=x.dtype)


class GrayAugment(nn.Module):
    """One random view of a batch of grey images (replicated to 3 channels); see the module docstring.

    Args:
        image_size / mean / std / scale / geometric: as :class:`SSLAugment` (``geometric=False``:
            the loader processes already cropped and flipped; the affine still runs here).
        blur: Gaussian blur with p = 0.5 (None: only for inputs of 96 px or more).

    Examples:
        >>> aug = GrayAugment(16, (0.5,) * 3, (0.25,) * 3)
        >>> v = aug(torch.rand(4, 1, 20, 20).expand(4, 3, 20, 20))
        >>> v.shape, bool((v[:, 0] == v[:, 2]).all())
        (torch.Size([4, 3, 16, 16]), True)
    """

    def __init__(self, image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 scale: tuple[float, float] = (0.2, 1.0), blur: bool | None = None, geometric: bool = True) -> None:
        super().__init__()
        K = _kornia_augmentation()

        if int(image_size) < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size!r}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {scale!r}")
        self.image_size, self.scale, self.geometric = int(image_size), (float(scale[0]), float(scale[1])), bool(geometric)
        self.blur = self.image_size >= BLUR_MIN_SIZE if blur is None else bool(blur)
        ops: list[nn.Module] = [K.RandomResizedCrop((self.image_size, self.image_size), scale=self.scale)] \
            if self.geometric else []
        ops.append(K.RandomAffine(degrees=15.0, translate=(0.1, 0.1), p=0.5))
        ops += [K.RandomHorizontalFlip()] if self.geometric else []
        ops.append(K.ColorJitter(brightness=0.4, contrast=0.4, p=0.8))
        if self.blur:
            kernel = max(3, int(0.1 * self.image_size) // 2 * 2 + 1)
            ops.append(K.RandomGaussianBlur((kernel, kernel), sigma=(0.1, 2.0), p=0.5))
        ops += [
            _GrayNoise(0.03, 0.5),
            K.Normalize(mean=torch.tensor(mean, dtype=torch.float32), std=torch.tensor(std, dtype=torch.float32)),
            K.RandomErasing(scale=(0.02, 0.2), ratio=(0.3, 3.3), value=0.0, p=0.25),
        ]
        self.ops = nn.Sequential(*ops)

    @torch.no_grad()
    def forward(self, x01: Tensor) -> Tensor:
        """Args: x01: ``(N, 3, H, W)`` float images in [0, 1]. Returns: one normalised view ``(N, 3, S, S)``."""
        if x01.dim() != 4 or x01.shape[1] != 3:
            raise ValueError(f"expected a (N, 3, H, W) batch, got shape {tuple(x01.shape)}")
        return self.ops(x01.float())


def build_augment(kind: str, image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                  scale: tuple[float, float], blur: bool | None = None, geometric: bool = True) -> nn.Module:
    """The symmetric view pipeline ``kind`` ("color": :class:`SSLAugment`, "gray": :class:`GrayAugment`)."""
    if kind == "gray":
        return GrayAugment(image_size, mean, std, scale=scale, blur=blur, geometric=geometric)
    if kind == "color":
        return SSLAugment(image_size, mean, std, blur=blur, scale=scale, geometric=geometric)
    raise ValueError(f"augmentation {kind!r} is not one of 'color', 'gray' (resolve 'auto' first)")


def asymmetric_pair(image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                    scale: tuple[float, float] = (0.08, 1.0), geometric: bool = True) -> tuple[SSLAugment, SSLAugment]:
    """The BYOL-style view pair of MoCo v3: blur p 1.0 / 0.1, solarize p 0 / 0.2, saturation 0.2."""
    return (SSLAugment(image_size, mean, std, scale=scale, blur_p=1.0, solarize_p=0.0, saturation=0.2,
                       geometric=geometric),
            SSLAugment(image_size, mean, std, scale=scale, blur_p=0.1, solarize_p=0.2, saturation=0.2,
                       geometric=geometric))


def two_views(aug: nn.Module, x: Tensor, aug2: nn.Module | None = None) -> tuple[Tensor, Tensor]:
    """Two independent views of the same batch: ``aug`` twice (symmetric) or ``aug`` then ``aug2``."""
    return aug(x), (aug if aug2 is None else aug2)(x)
