"""Training views (weak, strong, CPL's single view): shapes, ranges, reproducibility, identity settings, values."""

from __future__ import annotations

import pytest
import torch

from owdfa.data.views import (
    CPL_BRIGHTNESS_CONTRAST_LIMIT,
    CPL_BRIGHTNESS_CONTRAST_PROB,
    AugmentConfig,
    brightness_contrast,
    random_brightness_contrast,
    random_flip,
    random_jitter,
    random_resized_crop,
    single_view,
    strong_view,
    to_float,
    weak_view,
)

N, C, H, W = 8, 3, 16, 12
OFF = AugmentConfig(flip_prob=0.0, crop_prob=0.0, jitter_prob=0.0)
ALL_ON = AugmentConfig(flip_prob=1.0, crop_prob=1.0, jitter_prob=1.0)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, generator=gen(123))


@pytest.mark.parametrize("view", [weak_view, strong_view, single_view])
@pytest.mark.parametrize("config", [AugmentConfig(), ALL_ON, OFF], ids=["default", "all_on", "off"])
def test_view_shape_dtype_and_range(images, view, config):
    out = view(images, config, gen())
    assert out.shape == images.shape
    assert out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("view", [weak_view, strong_view, single_view])
@pytest.mark.parametrize("config", [AugmentConfig(), ALL_ON], ids=["default", "all_on"])
def test_same_seed_same_views(images, view, config):
    assert torch.equal(view(images, config, gen(5)), view(images, config, gen(5)))


def test_different_seeds_differ(images):
    assert not torch.equal(strong_view(images, ALL_ON, gen(1)), strong_view(images, ALL_ON, gen(2)))
    flips = [random_flip(to_float(images), 0.5, gen(s)) for s in range(4)]
    assert any(not torch.equal(flips[0], f) for f in flips[1:])


def test_views_do_not_modify_the_input(images):
    before = images.clone()
    strong_view(images, ALL_ON, gen())
    weak_view(images, ALL_ON, gen())
    assert torch.equal(images, before)
    floats = to_float(images)
    snapshot = floats.clone()
    strong_view(floats, ALL_ON, gen())
    assert torch.equal(floats, snapshot)


def test_to_float_scales_uint8_only(images):
    floats = to_float(images)
    assert floats.dtype == torch.float32
    assert torch.equal(floats, images.float() / 255.0)
    already = torch.rand(2, 3, 4, 4)
    assert to_float(already) is already


def test_flip_prob_one_flips_exactly(images):
    expected = to_float(images).flip(-1)
    config = AugmentConfig(flip_prob=1.0, crop_prob=0.0, jitter_prob=0.0)
    assert torch.equal(weak_view(images, config, gen()), expected)
    assert torch.equal(strong_view(images, config, gen()), expected)
    # A horizontal flip: column j becomes column W-1-j, rows and channels untouched.
    out = weak_view(images, config, gen())
    assert torch.equal(out[..., 0], to_float(images)[..., W - 1])


def test_all_probabilities_zero_is_the_identity(images):
    expected = to_float(images)
    assert torch.equal(weak_view(images, OFF, gen()), expected)
    assert torch.equal(strong_view(images, OFF, gen()), expected)


def test_flip_is_per_image(images):
    x = to_float(images)
    out = random_flip(x, 0.5, gen(0))
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(N)]
    kept = [torch.equal(out[i], x[i]) for i in range(N)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)


def test_crop_with_probability_one_changes_every_image(images):
    x = to_float(images)
    out = random_resized_crop(x, 1.0, (0.5, 0.6), gen(0))
    assert all(not torch.equal(out[i], x[i]) for i in range(N))
    assert torch.equal(random_resized_crop(x, 0.0, (0.5, 0.6), gen(0)), x)


def test_jitter_without_change_is_close_to_identity(images):
    x = to_float(images)
    assert torch.allclose(random_jitter(x, 1.0, 0.0, gen(0)), x, atol=1e-6)
    out = random_jitter(x, 1.0, 0.4, gen(0))
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert all(not torch.equal(out[i], x[i]) for i in range(N))


# --- CPL's single view ---------------------------------------------------------------------------


def constant(levels: list[int], size: int = 4) -> torch.Tensor:
    """One constant uint8 image per level, as floats in [0, 1]."""
    return to_float(torch.tensor(levels, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, size, size).contiguous())


def test_cpl_brightness_contrast_constants_are_the_albumentations_defaults():
    # Official transforms.py: alb.RandomBrightnessContrast(p=0.2), default limits 0.2 for both factors.
    assert CPL_BRIGHTNESS_CONTRAST_PROB == 0.2
    assert CPL_BRIGHTNESS_CONTRAST_LIMIT == 0.2


def test_brightness_contrast_is_albumentations_lut_on_constant_images():
    # albumentations (uint8): out = uint8(clip(alpha * v + beta * 255, 0, 255)), astype truncating.
    #   v=100, alpha 1.1,  beta  .1 : 110 + 25.5   = 135.5 -> 135
    #   v=100, alpha .85,  beta -.15: 85 - 38.25   = 46.75 -> 46
    #   v=250, alpha 1.2,  beta  .2 : 300 + 51     = 351   -> clipped 255
    #   v=10,  alpha .8,   beta -.2 : 8 - 51       = -43   -> clipped 0
    #   v=200, alpha 1,    beta 0   : 200 (identity)
    #   v=100, alpha 1.1,  beta 0   : 110 (contrast scales the level itself, not around the image mean:
    #                                  a constant image would be unchanged by a mean-centred contrast)
    images = constant([100, 100, 250, 10, 200, 100])
    alpha = torch.tensor([1.1, 0.85, 1.2, 0.8, 1.0, 1.1])
    beta = torch.tensor([0.1, -0.15, 0.2, -0.2, 0.0, 0.0])
    out = brightness_contrast(images, alpha, beta)
    expected = constant([135, 46, 255, 0, 200, 110])
    assert out.shape == images.shape and out.dtype == torch.float32
    assert torch.allclose(out, expected, atol=1e-7)
    assert torch.equal(torch.round(out * 255), torch.round(expected * 255))


def test_random_brightness_contrast_factors_and_probability():
    # On v = 128 with alpha = 1 + U(-.2, .2), beta = U(-.2, .2): the level is floor(128 alpha + 255 beta),
    # within [floor(102.4 - 51), floor(153.6 + 51)] = [51, 204], mean 128 - 0.5 (the truncation).
    # (sd of 128 alpha + 255 beta: sqrt(128^2 + 255^2) * .4 / sqrt(12) = 32.9; SE over 4000 images .52)
    images = constant([128] * 4000, size=1)
    levels = torch.round(random_brightness_contrast(images, 1.0, 0.2, gen(0)) * 255)[:, 0, 0, 0]
    assert levels.min() >= 51 and levels.max() <= 204
    assert levels.mean().item() == pytest.approx(127.5, abs=2.0)
    assert (levels < 90).any() and (levels > 166).any()  # brightness reaches +-51: wider than contrast alone
    # p = .2: about a fifth of the images change (a drawn pair hitting 128 again is rare, ~1 %).
    changed = torch.round(random_brightness_contrast(images, 0.2, 0.2, gen(1)) * 255)[:, 0, 0, 0] != 128
    assert changed.float().mean().item() == pytest.approx(0.2, abs=0.03)
    assert torch.equal(random_brightness_contrast(images, 0.0, 0.2, gen(2)), images)


def test_single_view_applies_cpl_brightness_contrast_on_constant_images():
    # Flip and crop leave a constant image constant; only the brightness/contrast step (p = .2, CPL's,
    # whatever the run's jitter settings) changes its level. The weak view never does.
    images = torch.full((3000, 3, 8, 8), 100, dtype=torch.uint8)
    for config in (AugmentConfig(), ALL_ON):
        levels = torch.round(single_view(images, config, gen(3)) * 255)
        per_image = levels.flatten(1)
        assert torch.equal(per_image.min(dim=1).values, per_image.max(dim=1).values)  # still constant
        changed = per_image[:, 0] != 100
        assert changed.float().mean().item() == pytest.approx(0.2, abs=0.03)
        assert per_image.min() >= 29 and per_image.max() <= 171  # floor(80 - 51), floor(120 + 51)
    assert torch.equal(torch.round(weak_view(images, ALL_ON, gen(3)) * 255), images.float())


def test_single_view_is_flip_then_crop_then_brightness_contrast():
    # The same generator draws feed the same three steps in this order.
    images = torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, generator=gen(9))
    config = AugmentConfig(flip_prob=0.5, crop_prob=0.5)
    g = gen(4)
    x = random_flip(to_float(images), 0.5, g)
    x = random_resized_crop(x, 0.5, config.crop_scale, g)
    expected = random_brightness_contrast(x, 0.2, 0.2, g)
    assert torch.equal(single_view(images, config, gen(4)), expected)
