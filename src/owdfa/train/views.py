"""Training views, computed on whole uint8 batches (CPU or GPU).

CAL's recipe: weak = horizontal flip; strong = flip, then with probability `crop_prob` a random
resized crop (area scale 0.5-1) and with probability `jitter_prob` a brightness/contrast jitter.
CPL's recipe (one view per image, `single_view`): flip, the same random resized crop, then with
probability 0.2 albumentations' RandomBrightnessContrast (spec §2.2). Batched tensor ops keep the
input pipeline far cheaper than the network on 2 CPU cores; all randomness comes from one explicit
generator, so a run is reproducible.

Two pixel recipes for the same operations (`AugmentConfig.view`):
* `official`: what the authors' transforms compute, step for step. CAL's strong view resamples
  *every* image to `official_crop_size` (int(256/224 * size): 292 at 256 px, 73 at 64 px) by a
  resize or an integer-box random resized crop, jitters it as torchvision's ColorJitter does on a
  PIL image (brightness and contrast in random order, contrast toward the rounded greyscale mean,
  uint8 truncation), and resizes it back with PIL's antialiased bilinear filter; CPL's cropped
  images go to 292 and back with cv2's (non-antialiased) bilinear, brightness/contrast in between.
  Every intermediate image is rounded to uint8 levels, as PIL and cv2 hand it on.
* `direct` (the embedded default): the crop resamples straight back to the cache's size and the
  other images are left untouched (no up-and-down resample); the jitter is brightness, then
  contrast about the RGB mean, in floats. docs/methods.md, "Departures from the official code", gives what
  each difference measured.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# CPL's RandomBrightnessContrast (official owdfa/datasets/utils/transforms.py: p=0.2 with the
# albumentations default limits 0.2). Constants rather than params: only CPL's view uses them and
# they are part of its recipe, not a setting shared with the other methods' views.
CPL_BRIGHTNESS_CONTRAST_PROB = 0.2
CPL_BRIGHTNESS_CONTRAST_LIMIT = 0.2


VIEWS = ("direct", "official")  # AugmentConfig.view: the pixel recipe (module docstring)
CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect-ratio range (torchvision and albumentations)
CROP_ATTEMPTS = 10  # RandomResizedCrop's tries before its central-crop fallback


@dataclass(frozen=True)
class AugmentConfig:
    flip_prob: float = 0.5
    crop_prob: float = 0.2
    crop_scale: tuple[float, float] = (0.5, 1.0)
    jitter_prob: float = 0.2
    jitter: float = 0.4
    view: str = "direct"


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
    if config.view == "official":
        return official_strong_view(images, draw_strong(images.shape, config, gen))
    x = random_flip(to_float(images), config.flip_prob, gen)
    x = random_resized_crop(x, config.crop_prob, config.crop_scale, gen)
    return random_jitter(x, config.jitter_prob, config.jitter, gen)


def single_view(images: torch.Tensor, config: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """CPL's only view: flip, random resized crop (the run's probabilities), brightness/contrast (CPL's p and limit).

    Official order: HorizontalFlip(0.5), RandomResizedCrop(292, scale 0.5-1, p 0.2),
    RandomBrightnessContrast(p 0.2), Resize(256). The crop here resamples straight back to the
    cache's size (one interpolation instead of the official crop-to-292 then resize); with
    `config.view: official` it takes the official two (`official_single_view`).
    """
    if config.view == "official":
        return official_single_view(images, draw_single(images.shape, config, gen))
    x = random_flip(to_float(images), config.flip_prob, gen)
    x = random_resized_crop(x, config.crop_prob, config.crop_scale, gen)
    return random_brightness_contrast(x, CPL_BRIGHTNESS_CONTRAST_PROB, CPL_BRIGHTNESS_CONTRAST_LIMIT, gen)


# --- The official pixel recipe ---------------------------------------------------------------------


def official_crop_size(image_size: int) -> int:
    """The official strong view's intermediate size: int(256/224 * size), 292 at 256 px, 73 at 64 px.

    Written as the authors' transforms write it, so the float rounding (and the truncation) is theirs.
    """
    return int((256 / 224) * image_size)


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """One integer box (top, left, height, width) per image, by RandomResizedCrop's rule.

    torchvision's `RandomResizedCrop.get_params` and albumentations' share it: up to 10 tries of an
    area fraction U(scale) and a log-uniform aspect ratio in [3/4, 4/3], sides rounded to whole
    pixels (half to even); the first box that fits is placed uniformly at whole-pixel offsets; when
    none fits, the central crop of the image clipped to the ratio range. Drawn in float64 as they
    draw in Python floats; the tries of all images at once (the same distribution, other streams).
    """
    shape = (n, CROP_ATTEMPTS)
    area = _uniform_like(shape, *scale, gen) * (height * width)
    aspect = torch.exp(_uniform_like(shape, math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), gen))
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # the first try that fits (0 when none does)
    found = fits.any(dim=1)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    fallback_w, fallback_h = _central_crop_size(height, width)
    w = torch.where(found, w, torch.full_like(w, fallback_w))
    h = torch.where(found, h, torch.full_like(h, fallback_h))
    top = torch.floor(torch.rand(n, generator=gen, dtype=torch.float64) * (height - h + 1))
    left = torch.floor(torch.rand(n, generator=gen, dtype=torch.float64) * (width - w + 1))
    top = torch.where(found, top, (height - h).div(2, rounding_mode="floor"))
    left = torch.where(found, left, (width - w).div(2, rounding_mode="floor"))
    return torch.stack([top, left, h, w], dim=1).to(torch.int64)


def _central_crop_size(height: int, width: int) -> tuple[int, int]:
    """RandomResizedCrop's fallback (width, height): the whole image, clipped to the aspect-ratio range."""
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        return width, int(round(width / CROP_RATIO[0]))
    if in_ratio > CROP_RATIO[1]:
        return int(round(height * CROP_RATIO[1])), height
    return width, height


def _uniform_like(shape: tuple[int, ...], low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low


@dataclass(frozen=True)
class StrongDraws:
    """One batch's random choices of CAL's official strong view, one row per image.

    Kept apart from the pixels so that a test can force them and compare with torchvision's own
    transform. `boxes` (top, left, height, width) are used where `crop`; `brightness_first` is the
    order ColorJitter's random permutation puts the two adjustments in.
    """

    flip: torch.Tensor
    crop: torch.Tensor
    boxes: torch.Tensor
    jitter: torch.Tensor
    brightness_first: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor


def draw_strong(shape: torch.Size | tuple[int, ...], config: AugmentConfig, gen: torch.Generator) -> StrongDraws:
    """The draws of `official_strong_view` for a batch of `shape` (N, C, H, W), from `gen` (on the CPU).

    Official probabilities: flip `flip_prob`, crop `crop_prob` (else a plain resize), ColorJitter
    applied with `jitter_prob`, its factors U(max(0, 1 - jitter), 1 + jitter).
    """
    n, _, height, width = shape
    flip = torch.rand(n, generator=gen) < config.flip_prob
    crop = torch.rand(n, generator=gen) < config.crop_prob
    boxes = crop_boxes(n, height, width, config.crop_scale, gen)
    jitter = torch.rand(n, generator=gen) < config.jitter_prob
    brightness_first = torch.rand(n, generator=gen) < 0.5
    low = max(0.0, 1.0 - config.jitter)
    brightness = _uniform_like((n,), low, 1.0 + config.jitter, gen)
    contrast = _uniform_like((n,), low, 1.0 + config.jitter, gen)
    return StrongDraws(flip, crop, boxes, jitter, brightness_first, brightness, contrast)


def official_strong_view(images: torch.Tensor, draws: StrongDraws) -> torch.Tensor:
    """CAL's strong view as its transforms compute it on a PIL image, for a uint8 (N, C, H, W) batch.

    Flip; every image to `official_crop_size` (a crop box resized there, or the whole image with its
    shorter side resized there); ColorJitter; an antialiased bilinear resize back to (H, W). Returns
    floats in [0, 1]. PIL rounds each intermediate image to uint8 levels, and so does this.
    """
    levels = _levels(images)
    n, _, height, width = levels.shape
    flip = draws.flip.to(levels.device).view(-1, 1, 1, 1)
    levels = torch.where(flip, levels.flip(-1), levels)
    size = official_crop_size(height)  # the official size is of the square training image
    out = torch.empty_like(levels)
    whole = (~draws.crop).nonzero().squeeze(1)
    cropped = draws.crop.nonzero().squeeze(1)
    if len(whole):
        mid = resize_levels(levels[whole.to(levels.device)], _shorter_side(height, width, size), antialias=True)
        out[whole.to(levels.device)] = resize_levels(_pil_color_jitter(mid, draws, whole), (height, width), True)
    if len(cropped):
        mid = _crop_resize(levels, draws.boxes, cropped, (size, size), antialias=True)
        out[cropped.to(levels.device)] = resize_levels(_pil_color_jitter(mid, draws, cropped), (height, width), True)
    return out.div_(255.0)


def _levels(images: torch.Tensor) -> torch.Tensor:
    """uint8 levels 0-255 as floats (a float batch in [0, 1] is rounded to the uint8 grid first)."""
    if images.dtype == torch.uint8:
        return images.float()
    return torch.round(images * 255.0)


def _shorter_side(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's `resize(img, size)` for an int: the shorter side becomes `size`, the ratio is kept."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resize_levels(levels: torch.Tensor, size: tuple[int, int], antialias: bool) -> torch.Tensor:
    """Bilinear resize of uint8 levels (floats) to uint8 levels: PIL's (`antialias`) or cv2's.

    An image resized to its own size is returned as it is: PIL and cv2 copy it.
    """
    if tuple(levels.shape[-2:]) == tuple(size):
        return levels
    if antialias:
        return pil_bilinear_resize(levels, size)
    # cv2's INTER_LINEAR: half-pixel centres, the border pixel repeated, no widening when shrinking,
    # rounded to the nearest level. cv2's own fixed-point arithmetic (11-bit weights) is not copied.
    out = F.interpolate(levels, size=size, mode="bilinear", align_corners=False, antialias=False)
    return out.round_().clamp_(0.0, 255.0)


PIL_PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c: fixed-point weights of uint8 images


def pil_bilinear_resize(levels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL's `Image.resize(size, BILINEAR)` of uint8 levels (floats), bit for bit.

    Pillow resamples in two separable passes, horizontal first, each rounding to uint8: an output
    level is clip((2^21 + sum_k level_k * weight_k) >> 22) with 22-bit fixed-point weights. The same
    integer arithmetic here (int32, as Pillow's), a few taps per output pixel. (Pillow >= 13 takes the
    vertical pass first when the height shrinks much more than the width; the views never resize so:
    they scale uniformly, or enlarge a crop box.)
    """
    height, width = levels.shape[-2:]
    out = levels.to(torch.int32)
    if size[1] != width:
        out = _pil_pass(out, *_pil_taps(width, size[1]))
    if size[0] != height:
        out = _pil_pass(out.transpose(-1, -2), *_pil_taps(height, size[0])).transpose(-1, -2)
    return out.float().contiguous()


def _pil_pass(levels: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """One of PIL's passes along the last axis: the fixed-point sum, its rounding shift and clip.

    The resampled axis is moved to the front, so that each tap gathers whole contiguous rows.
    """
    index, weight = index.to(levels.device), weight.to(levels.device)
    lead = levels.shape[:-1]
    columns = levels.reshape(-1, levels.shape[-1]).T.contiguous()  # (in, rows)
    sums = torch.full((index.shape[0], columns.shape[1]), 1 << (PIL_PRECISION_BITS - 1), dtype=torch.int32)
    sums = sums.to(levels.device)
    for tap in range(index.shape[1]):
        sums += columns.index_select(0, index[:, tap]) * weight[:, tap, None]
    return (sums >> PIL_PRECISION_BITS).clamp_(0, 255).T.reshape(*lead, index.shape[0])


@functools.lru_cache(maxsize=64)
def _pil_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's bilinear taps: per output pixel, input indices (out_size x K) and fixed-point weights.

    Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc`: the triangle filter widened by the
    scale when shrinking, taps clipped at the border and renormalised, then scaled by 2^22 and
    rounded half away from zero. Unused tap slots point at pixel 0 with weight 0.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    inverse = 1.0 / filterscale  # Pillow multiplies by the reciprocal (the last bit can differ from dividing)
    width = int(math.ceil(support)) * 2 + 1
    index = torch.zeros(out_size, width, dtype=torch.int64)
    weight = torch.zeros(out_size, width, dtype=torch.int32)
    for out_x in range(out_size):
        center = (out_x + 0.5) * scale
        low = max(int(center - support + 0.5), 0)
        high = min(int(center + support + 0.5), in_size)
        taps = [max(0.0, 1.0 - abs((x - center + 0.5) * inverse)) for x in range(low, high)]
        total = sum(taps)
        for slot, tap in enumerate(taps):
            value = tap / total if total != 0.0 else tap
            index[out_x, slot] = low + slot
            weight[out_x, slot] = int(value * (1 << PIL_PRECISION_BITS) + (0.5 if value >= 0 else -0.5))
    return index, weight


def _crop_resize(
    levels: torch.Tensor, boxes: torch.Tensor, rows: torch.Tensor, size: tuple[int, int], antialias: bool
) -> torch.Tensor:
    """Each of `rows` cut to its integer box and resized to `size` (one image at a time: the boxes differ)."""
    parts = []
    for row in rows.tolist():
        top, left, h, w = boxes[row].tolist()
        parts.append(resize_levels(levels[row : row + 1, :, top : top + h, left : left + w], size, antialias))
    return torch.cat(parts)


def _pil_color_jitter(levels: torch.Tensor, draws: StrongDraws, rows: torch.Tensor) -> torch.Tensor:
    """torchvision's ColorJitter(brightness, contrast) on PIL images, for the images `rows` of the batch.

    Applied with the draw's probability, brightness and contrast in the drawn order. Only the rows
    that jitter are computed.
    """
    apply = draws.jitter[rows]
    if not apply.any():
        return levels
    local = apply.nonzero().squeeze(1)
    picked = rows[local]
    x = levels[local.to(levels.device)]
    b, c = draws.brightness[picked], draws.contrast[picked]
    b_first = pil_contrast(pil_brightness(x, b), c)
    c_first = pil_brightness(pil_contrast(x, c), b)
    order = draws.brightness_first[picked].to(levels.device).view(-1, 1, 1, 1)
    out = levels.clone()
    out[local.to(levels.device)] = torch.where(order, b_first, c_first)
    return out


def pil_brightness(levels: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance.Brightness: blend with black, i.e. level x factor, truncated and clipped.

    PIL's blend takes the factor as a C float and truncates its float result to uint8; so does this.
    """
    f = factor.to(levels.device, torch.float32).view(-1, 1, 1, 1)
    return (levels * f).clamp_(0.0, 255.0).floor_()


def pil_contrast(levels: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance.Contrast: blend toward the image's mean grey level.

    The grey image is PIL's "L" conversion, (19595 R + 38470 G + 7471 B + 32768) >> 16 per pixel; its
    mean is rounded to a whole level; the blend m + factor (v - m) is computed in C floats and
    truncated to uint8, clipped. (torchvision's tensor ColorJitter differs: it blends toward the
    unrounded mean; the official transform runs on PIL images.)
    """
    red, green, blue = levels[:, 0], levels[:, 1], levels[:, 2]
    grey = torch.floor((red * 19595 + green * 38470 + blue * 7471 + 32768) / 65536)  # exact in float32
    mean = torch.floor(grey.double().mean(dim=(1, 2)) + 0.5).float().view(-1, 1, 1, 1)
    f = factor.to(levels.device, torch.float32).view(-1, 1, 1, 1)
    return (mean + f * (levels - mean)).clamp_(0.0, 255.0).floor_()


@dataclass(frozen=True)
class SingleDraws:
    """One batch's random choices of CPL's official view: flip, crop (with its box), brightness/contrast."""

    flip: torch.Tensor
    crop: torch.Tensor
    boxes: torch.Tensor
    adjust: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor


def draw_single(shape: torch.Size | tuple[int, ...], config: AugmentConfig, gen: torch.Generator) -> SingleDraws:
    """The draws of `official_single_view`: flip and crop with the run's probabilities, CPL's own
    RandomBrightnessContrast (p 0.2, alpha = 1 + U(-0.2, 0.2), beta = U(-0.2, 0.2))."""
    n, _, height, width = shape
    flip = torch.rand(n, generator=gen) < config.flip_prob
    crop = torch.rand(n, generator=gen) < config.crop_prob
    boxes = crop_boxes(n, height, width, config.crop_scale, gen)
    adjust = torch.rand(n, generator=gen) < CPL_BRIGHTNESS_CONTRAST_PROB
    limit = CPL_BRIGHTNESS_CONTRAST_LIMIT
    alpha = 1.0 + _uniform_like((n,), -limit, limit, gen)
    beta = _uniform_like((n,), -limit, limit, gen)
    return SingleDraws(flip, crop, boxes, adjust, alpha, beta)


def official_single_view(images: torch.Tensor, draws: SingleDraws) -> torch.Tensor:
    """CPL's view as its albumentations pipeline computes it, for a uint8 (N, C, H, W) batch.

    HorizontalFlip; RandomResizedCrop to `official_crop_size` (cv2 bilinear) for the cropped images
    only (the others keep their size); RandomBrightnessContrast on uint8 levels; Resize to (H, W)
    (cv2 bilinear: a copy for the images that kept the size). Returns floats in [0, 1].
    """
    levels = _levels(images)
    _, _, height, width = levels.shape
    flip = draws.flip.to(levels.device).view(-1, 1, 1, 1)
    levels = torch.where(flip, levels.flip(-1), levels)
    out = _brightness_contrast_levels(levels, draws.alpha, draws.beta, draws.adjust)
    cropped = draws.crop.nonzero().squeeze(1)  # on the CPU, as the draws are
    if len(cropped):
        size = official_crop_size(height)
        mid = _crop_resize(levels, draws.boxes, cropped, (size, size), antialias=False)
        mid = _brightness_contrast_levels(mid, draws.alpha[cropped], draws.beta[cropped], draws.adjust[cropped])
        out[cropped.to(levels.device)] = resize_levels(mid, (height, width), antialias=False)
    return out.div_(255.0)


def _brightness_contrast_levels(
    levels: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, apply: torch.Tensor
) -> torch.Tensor:
    """`brightness_contrast` on uint8 levels (floats), for the images where `apply`."""
    adjusted = brightness_contrast(levels / 255.0, alpha.float(), beta.float()) * 255.0
    return torch.where(apply.to(levels.device).view(-1, 1, 1, 1), torch.round(adjusted), levels)
