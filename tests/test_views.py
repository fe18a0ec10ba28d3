"""Weak and strong training views: shapes, ranges, reproducibility and the identity settings."""

from __future__ import annotations

import pytest
import torch

from owdfa.data.views import (
    AugmentConfig,
    random_flip,
    random_jitter,
    random_resized_crop,
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


@pytest.mark.parametrize("view", [weak_view, strong_view])
@pytest.mark.parametrize("config", [AugmentConfig(), ALL_ON, OFF], ids=["default", "all_on", "off"])
def test_view_shape_dtype_and_range(images, view, config):
    out = view(images, config, gen())
    assert out.shape == images.shape
    assert out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("view", [weak_view, strong_view])
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
