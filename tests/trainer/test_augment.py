"""Two-view kornia augmentation (docs/method.md §12.2): shapes, independence, seeding, blur only for large inputs."""

from __future__ import annotations

import pytest
import torch

from us3l.trainer.augment import SSLAugment, two_views

MEAN, STD = (0.3, 0.3, 0.3), (0.3, 0.3, 0.3)


def test_views_shape_and_independence():
    aug = SSLAugment(16, MEAN, STD)
    x = torch.rand(32, 3, 20, 20)
    v1, v2 = two_views(aug, x)
    assert v1.shape == v2.shape == (32, 3, 16, 16)
    assert v1.dtype == torch.float32 and torch.isfinite(v1).all()
    assert not torch.allclose(v1, v2)
    assert not v1.requires_grad


def test_seeded_and_per_image_randomness():
    aug = SSLAugment(16, MEAN, STD)
    x = torch.rand(1, 3, 16, 16).repeat(16, 1, 1, 1)
    torch.manual_seed(0)
    a = aug(x)
    torch.manual_seed(0)
    b = aug(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])  # each image gets its own parameters


def test_pipeline_composition_and_blur_rule():
    small = SSLAugment(32, MEAN, STD)
    names = [type(m).__name__ for m in small.ops]
    assert names == ["RandomResizedCrop", "ColorJitter", "RandomGrayscale", "RandomHorizontalFlip", "Normalize"]
    assert small.scale == (0.2, 1.0)
    assert small.ops[1].p == pytest.approx(0.8) and small.ops[2].p == pytest.approx(0.2)
    big = SSLAugment(96, MEAN, STD)
    assert big.blur and "RandomGaussianBlur" in [type(m).__name__ for m in big.ops]
    assert SSLAugment(32, MEAN, STD, blur=True).blur and not SSLAugment(224, MEAN, STD, blur=False).blur


def test_normalisation_applied_last():
    aug = SSLAugment(8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    out = aug(torch.rand(64, 3, 8, 8))
    assert out.min() < -0.5 and out.max() > 0.5  # [0, 1] mapped to about [-2, 2]


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        SSLAugment(16, MEAN, STD)(torch.rand(3, 16, 16))
    with pytest.raises(ValueError):
        SSLAugment(16, MEAN, STD, scale=(0.0, 1.0))


def test_asymmetric_pair_for_mocov3():
    """Item 3: BYOL-style views: blur p 1.0 / 0.1, solarize p 0 / 0.2, jitter saturation 0.2, crops from 0.08.

    Old behaviour caught: MoCo v3 used the symmetric MoCo-v2 pipeline for both views.
    """
    from us3l.trainer.augment import asymmetric_pair

    a, b = asymmetric_pair(32, MEAN, STD, scale=(0.08, 1.0))
    assert (a.blur_p, a.solarize_p, b.blur_p, b.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    assert a.scale == b.scale == (0.08, 1.0)
    names_a = [type(m).__name__ for m in a.ops]
    names_b = [type(m).__name__ for m in b.ops]
    assert "RandomSolarize" not in names_a and "RandomSolarize" in names_b and "RandomGaussianBlur" in names_a
    jitter = a.ops[1]
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (0.4, 0.4, 0.2, 0.1)
    x = torch.rand(8, 3, 32, 32)
    v1, v2 = two_views(a, x, b)
    assert v1.shape == v2.shape == (8, 3, 32, 32) and not torch.allclose(v1, v2)


def test_solarize_inverts_pixels_from_one_half():
    aug = SSLAugment(4, (0.0,) * 3, (1.0,) * 3, scale=(1.0, 1.0), blur_p=0.0, solarize_p=1.0)
    aug.ops = torch.nn.Sequential(*[m for m in aug.ops if type(m).__name__ in ("RandomSolarize", "Normalize")])
    x = torch.tensor([0.2, 0.49, 0.5, 0.9]).view(1, 1, 1, 4).expand(1, 3, 4, 4)
    assert torch.allclose(aug(x)[0, 0, 0], torch.tensor([0.2, 0.49, 0.5, 0.1]))


def test_gray_views_exist_in_grey_images_and_stay_grey():
    """Item 2: no saturation, hue or grayscale ops; crop, affine, flip, brightness/contrast, noise, erasing."""
    from us3l.trainer.augment import GrayAugment, build_augment

    aug = GrayAugment(16, MEAN, STD)
    names = [type(m).__name__ for m in aug.ops]
    assert names == ["RandomResizedCrop", "RandomAffine", "RandomHorizontalFlip", "ColorJitter", "_GrayNoise",
                     "Normalize", "RandomErasing"]
    jitter = aug.ops[3]
    assert aug.scale == (0.2, 1.0) and jitter.p == pytest.approx(0.8)
    x = torch.rand(64, 1, 20, 20).expand(64, 3, 20, 20)
    torch.manual_seed(0)
    v1, v2 = two_views(aug, x)
    assert v1.shape == (64, 3, 16, 16) and not torch.allclose(v1, v2)
    assert torch.equal(v1[:, 0], v1[:, 1]) and torch.equal(v1[:, 1], v1[:, 2])  # still grey: channels equal
    torch.manual_seed(0)
    assert torch.equal(two_views(aug, x)[0], v1)  # seeded
    assert "RandomGaussianBlur" in [type(m).__name__ for m in GrayAugment(96, MEAN, STD).ops]
    assert [type(m).__name__ for m in GrayAugment(16, MEAN, STD, geometric=False).ops][:2] == ["RandomAffine", "ColorJitter"]
    assert isinstance(build_augment("color", 16, MEAN, STD, (0.2, 1.0)), SSLAugment)
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        build_augment("auto", 16, MEAN, STD, (0.2, 1.0))
