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
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

BLUR_MIN_SIZE = 96


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
        try:  # heavy, and part of the [train] extra: imported only where augmentation is built
            import kornia.augmentation as K
        except ImportError:
            from us3l.core.errors import BackendUnavailableError

            raise BackendUnavailableError("training augmentation needs kornia, which a deploy-only install leaves out; "
                                          "pip install 'us3l-deploy[train]'") from None

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
        ops: list[nn.Module] = [K.RandomResizedCrop((self.image_size, self.image_size), scale=tuple(scale))] \
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


def asymmetric_pair(image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                    scale: tuple[float, float] = (0.08, 1.0), geometric: bool = True) -> tuple[SSLAugment, SSLAugment]:
    """The BYOL-style view pair of MoCo v3: blur p 1.0 / 0.1, solarize p 0 / 0.2, saturation 0.2."""
    return (SSLAugment(image_size, mean, std, scale=scale, blur_p=1.0, solarize_p=0.0, saturation=0.2,
                       geometric=geometric),
            SSLAugment(image_size, mean, std, scale=scale, blur_p=0.1, solarize_p=0.2, saturation=0.2,
                       geometric=geometric))


def two_views(aug: SSLAugment, x: Tensor, aug2: SSLAugment | None = None) -> tuple[Tensor, Tensor]:
    """Two independent views of the same batch: ``aug`` twice (symmetric) or ``aug`` then ``aug2``."""
    return aug(x), (aug if aug2 is None else aug2)(x)
