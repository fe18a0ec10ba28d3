"""Training views, computed on whole uint8 batches (CPU or GPU).

CAL's recipe: weak = horizontal flip; strong = flip, then with probability `crop_prob` a random
resized crop (area scale 0.5-1) and with probability `jitter_prob` a brightness/contrast jitter.
CPL's recipe (one view per image, `single_view`): flip, the same random resized crop, then with
probability 0.2 albumentations' RandomBrightnessContrast (spec §2.2). Batched tensor ops keep the
input pipeline far cheaper than the network on 2 CPU cores; all randomness comes from one explicit
generator, so a run is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# CPL's RandomBrightnessContrast (official owdfa/datasets/utils/transforms.py: p=0.2 with the
# albumentations default limits 0.2). Constants rather than params: only CPL's view uses them and
# they are part of its recipe, not a setting shared with the other methods' views.
CPL_BRIGHTNESS_CONTRAST_PROB = 0.2
CPL_BRIGHTNESS_CONTRAST_LIMIT = 0.2


@dataclass(frozen=True)
class AugmentConfig:
    flip_prob: float = 0.5
    crop_prob: float = 0.2
    crop_scale: tuple[float, float] = (0.5, 1.0)
    jitter_prob: float = 0.2
    jitter: float = 0.4


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (high - low) + low


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def random_flip(images: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(images.shape[0], generator=gen) < prob).to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


def random_resized_crop(
    images: torch.Tensor, prob: float, scale: tuple[float, float], gen: torch.Generator
) -> torch.Tensor:
    n = images.shape[0]
    apply = torch.rand(n, generator=gen) < prob
    area = _uniform(n, *scale, gen)
    log_ratio = _uniform(n, math.log(3 / 4), math.log(4 / 3), gen)
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - h)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    cropped = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.where(apply.to(images.device).view(-1, 1, 1, 1), cropped, images)


def random_jitter(images: torch.Tensor, prob: float, amount: float, gen: torch.Generator) -> torch.Tensor:
    n = images.shape[0]
    apply = (torch.rand(n, generator=gen) < prob).view(-1, 1, 1, 1)
    brightness = _uniform(n, 1 - amount, 1 + amount, gen).view(-1, 1, 1, 1)
    contrast = _uniform(n, 1 - amount, 1 + amount, gen).view(-1, 1, 1, 1)
    brightness, contrast, apply = (t.to(images.device) for t in (brightness, contrast, apply))
    out = (images * brightness).clamp(0, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean).clamp(0, 1)
    return torch.where(apply, out, images)


def brightness_contrast(images: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """albumentations' brightness/contrast on uint8 levels: floor(clip(alpha * v + 255 * beta, 0, 255)).

    The official pipeline applies it to a uint8 image through a lookup table, so the level v is the
    pixel rounded to the uint8 grid (what cv2's crop/resize hands on) and the result is truncated
    back to an integer level. Contrast scales the level itself (not around the mean, unlike CAL's
    jitter); brightness adds a fraction of the maximum. `alpha`, `beta`: one value per image.
    Returns floats in [0, 1].
    """
    alpha = alpha.to(images.device, images.dtype).view(-1, 1, 1, 1)
    beta = beta.to(images.device, images.dtype).view(-1, 1, 1, 1)
    levels = torch.round(images * 255.0)
    return torch.floor((levels * alpha + beta * 255.0).clamp(0.0, 255.0)) / 255.0


def random_brightness_contrast(images: torch.Tensor, prob: float, limit: float, gen: torch.Generator) -> torch.Tensor:
    """Per image with probability `prob`: `brightness_contrast` with alpha = 1 + U(-l, l), beta = U(-l, l).

    l = `limit`; albumentations' RandomBrightnessContrast draws its two factors the same way.
    """
    n = images.shape[0]
    apply = (torch.rand(n, generator=gen) < prob).to(images.device).view(-1, 1, 1, 1)
    alpha = 1.0 + _uniform(n, -limit, limit, gen)
    beta = _uniform(n, -limit, limit, gen)
    return torch.where(apply, brightness_contrast(images, alpha, beta), images)


def weak_view(images: torch.Tensor, config: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    return random_flip(to_float(images), config.flip_prob, gen)


def strong_view(images: torch.Tensor, config: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    x = random_flip(to_float(images), config.flip_prob, gen)
    x = random_resized_crop(x, config.crop_prob, config.crop_scale, gen)
    return random_jitter(x, config.jitter_prob, config.jitter, gen)


def single_view(images: torch.Tensor, config: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """CPL's only view: flip, random resized crop (the run's probabilities), brightness/contrast (CPL's p and limit).

    Official order: HorizontalFlip(0.5), RandomResizedCrop(292, scale 0.5-1, p 0.2),
    RandomBrightnessContrast(p 0.2), Resize(256). The crop here resamples straight back to the
    cache's size (one interpolation instead of the official crop-to-292 then resize).
    """
    x = random_flip(to_float(images), config.flip_prob, gen)
    x = random_resized_crop(x, config.crop_prob, config.crop_scale, gen)
    return random_brightness_contrast(x, CPL_BRIGHTNESS_CONTRAST_PROB, CPL_BRIGHTNESS_CONTRAST_LIMIT, gen)
