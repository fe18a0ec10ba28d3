"""The embedded synthetic OW-DFA benchmark.

Procedurally drawn faces (identity = face shape, skin tone, eyes, nose, mouth, hair, background;
each image a "frame" with its own pose, lighting and expression) and forgery methods in the four
families of real deepfakes. Every method leaves its own trace, and methods of one family leave
related traces, as in reality:

* face swap   - another identity's inner face blended in; methods differ in the generator's
                resolution, mask shape, feathering, colour transfer and blending rule;
* reenactment - the target's own face re-animated by a warp; methods differ in the warp model
                and the resampling filter;
* editing     - region-specific colour/texture edits (hair, skin, attribute GAN pass);
* synthesis   - whole images with no camera: GAN up-sampling checkerboards and spectral peaks,
                diffusion-like smooth images with their own residual-noise spectra.

Real images and swap/reenact/edit targets go through a "camera" (render at 2x, area
down-sampling, sensor noise); every image is then JPEG-compressed at a random quality, which
weakens the fingerprints the way social-media re-encoding does. Identities are shared by all
classes (as FF++ real and fake videos share sources), so identity is no shortcut.

Everything is a pure function of (seed, class, image index): the same params give the same
PNG bytes on every machine, in any process order.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from owdfa.core.config import Section, param
from owdfa.core.errors import ConfigError

REAL_FOLDER = "0_Real_Camera"


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and difficulty of the generated benchmark (params section `data.synthetic`, every key required)."""

    seed: int = param(2025, min=0)
    image_size: int = param(64, min=16, max=1024)
    identities: int = param(150, min=2)
    real_images: int = param(1000, min=1)
    images_per_method: int = param(200, min=1)
    fingerprint_strength: float = param(1.0, min=0.0, max=5.0)
    jpeg_quality: tuple[int, int] = param((80, 95), min=10, max=100)
    sensor_noise: tuple[float, float] = param((0.004, 0.012), min=0.0, max=0.2)

    def validate(self, section: Section) -> None:
        if self.image_size % 8:
            raise ConfigError(
                section.key("image_size"),
                f"must be a multiple of 8 (the generators down-sample by 8), got {self.image_size}",
            )


# --------------------------------------------------------------------------------------------
# Identities, poses and the face renderer


@dataclass(frozen=True)
class Identity:
    """Everything that stays fixed across the "frames" of one person."""

    skin: tuple[float, float, float]
    face_axes: tuple[float, float]
    face_center_y: float
    hair: tuple[float, float, float]
    hairline: float
    long_hair: bool
    eye_spacing: float
    eye_axes: tuple[float, float]
    eye_y: float
    iris: tuple[float, float, float]
    brow_thickness: float
    nose_length: float
    nose_width: float
    mouth_width: float
    mouth_y: float
    lips: tuple[float, float, float]
    background: tuple[tuple[float, float, float], tuple[float, float, float]]
    shirt: tuple[float, float, float]


@dataclass(frozen=True)
class Pose:
    """What changes from frame to frame: head pose, lighting and expression."""

    angle: float
    shift: tuple[float, float]
    scale: float
    light: tuple[float, float]
    mouth_open: float
    blink: float


_SKIN_LIGHT = np.array([0.95, 0.82, 0.71])
_SKIN_DARK = np.array([0.36, 0.24, 0.17])
_HAIR = np.array(
    [
        [0.08, 0.06, 0.05],
        [0.30, 0.19, 0.10],
        [0.55, 0.40, 0.22],
        [0.85, 0.72, 0.45],
        [0.55, 0.25, 0.12],
        [0.62, 0.62, 0.64],
    ]
)
_IRIS = np.array([[0.30, 0.18, 0.08], [0.20, 0.35, 0.60], [0.25, 0.45, 0.25], [0.12, 0.10, 0.08]])


def _colour(rng: np.random.Generator, base: np.ndarray, spread: float) -> tuple[float, float, float]:
    c = np.clip(base + rng.normal(0.0, spread, 3), 0.0, 1.0)
    return (float(c[0]), float(c[1]), float(c[2]))


def make_identity(seed: int, identity: int) -> Identity:
    rng = np.random.default_rng([seed, 7919, identity])
    skin = _SKIN_LIGHT + rng.uniform(0, 1) * (_SKIN_DARK - _SKIN_LIGHT)
    return Identity(
        skin=_colour(rng, skin, 0.03),
        face_axes=(float(rng.uniform(0.22, 0.29)), float(rng.uniform(0.29, 0.36))),
        face_center_y=float(rng.uniform(0.52, 0.57)),
        hair=_colour(rng, _HAIR[rng.integers(len(_HAIR))], 0.04),
        hairline=float(rng.uniform(0.18, 0.40)),
        long_hair=bool(rng.uniform() < 0.45),
        eye_spacing=float(rng.uniform(0.085, 0.12)),
        eye_axes=(float(rng.uniform(0.032, 0.048)), float(rng.uniform(0.017, 0.026))),
        eye_y=float(rng.uniform(-0.07, -0.03)),
        iris=_colour(rng, _IRIS[rng.integers(len(_IRIS))], 0.04),
        brow_thickness=float(rng.uniform(0.008, 0.018)),
        nose_length=float(rng.uniform(0.07, 0.12)),
        nose_width=float(rng.uniform(0.025, 0.045)),
        mouth_width=float(rng.uniform(0.055, 0.085)),
        mouth_y=float(rng.uniform(0.13, 0.18)),
        lips=_colour(rng, skin * np.array([1.0, 0.62, 0.62]), 0.04),
        background=(_colour(rng, rng.uniform(0.1, 0.9, 3), 0.0), _colour(rng, rng.uniform(0.1, 0.9, 3), 0.0)),
        shirt=_colour(rng, rng.uniform(0.05, 0.9, 3), 0.0),
    )


def make_pose(rng: np.random.Generator) -> Pose:
    return Pose(
        angle=float(rng.uniform(-9, 9)),
        shift=(float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.03, 0.03))),
        scale=float(rng.uniform(0.93, 1.07)),
        light=(float(rng.uniform(-0.35, 0.35)), float(rng.uniform(-0.25, 0.25))),
        mouth_open=float(rng.uniform(0.0, 0.35)) if rng.uniform() < 0.5 else 0.0,
        blink=float(rng.uniform(0.0, 0.8)) if rng.uniform() < 0.15 else 0.0,
    )


@dataclass
class Rendered:
    """An RGB image in [0, 1] with the region masks the forgery methods need."""

    image: np.ndarray
    masks: dict[str, np.ndarray]


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float, px: float) -> np.ndarray:
    """Anti-aliased ellipse mask: a one-pixel linear ramp at the border."""
    r = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    return np.clip(0.5 + (1.0 - r) * min(ax, ay) / px, 0.0, 1.0)


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray | tuple[float, ...]) -> None:
    m = mask[..., None]
    img *= 1.0 - m
    img += m * np.asarray(colour, dtype=np.float32)


def render(identity: Identity, pose: Pose, size: int) -> Rendered:
    """Draw one frame of `identity` at `size` pixels."""
    px = 1.0 / size
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    gx, gy = np.meshgrid(coords, coords)
    fc_y = identity.face_center_y
    # Inverse pose: output pixel -> canonical face coordinates.
    cx, cy = 0.5 + pose.shift[0], fc_y + pose.shift[1]
    a = math.radians(pose.angle)
    dx, dy = gx - cx, gy - cy
    x = 0.5 + (math.cos(a) * dx + math.sin(a) * dy) / pose.scale
    y = fc_y + (-math.sin(a) * dx + math.cos(a) * dy) / pose.scale
    cpx = px / pose.scale

    bg0, bg1 = (np.asarray(c, dtype=np.float32) for c in identity.background)
    img = (bg0 * (1 - gy[..., None]) + bg1 * gy[..., None]).astype(np.float32)
    ax, ay = identity.face_axes
    masks: dict[str, np.ndarray] = {}

    _paint(img, _ellipse(x, y, 0.5, 1.12, 0.42, 0.30, cpx), identity.shirt)
    skin = np.asarray(identity.skin, dtype=np.float32)
    _paint(img, _ellipse(x, y, 0.5, fc_y + ay * 0.95, ax * 0.45, ay * 0.55, cpx), skin * 0.82)
    hair = np.asarray(identity.hair, dtype=np.float32)
    if identity.long_hair:
        _paint(img, _ellipse(x, y, 0.5, fc_y + 0.02, ax * 1.28, ay * 1.18, cpx), hair * 0.85)
    for side in (-1, 1):
        _paint(img, _ellipse(x, y, 0.5 + side * ax * 0.98, fc_y, ax * 0.16, ay * 0.22, cpx), skin * 0.9)

    face = _ellipse(x, y, 0.5, fc_y, ax, ay, cpx)
    r2 = ((x - 0.5) / ax) ** 2 + ((y - fc_y) / ay) ** 2
    shaded = skin * (1.0 - 0.22 * np.clip(r2, 0, 1))[..., None]
    m = face[..., None]
    img = img * (1 - m) + shaded * m
    masks["face"] = face

    # Hair on top of the head, above a curved hairline.
    top = fc_y - ay * (1.0 - identity.hairline)
    hairline = top + 0.35 * ((x - 0.5) / ax) ** 2 * ay
    above = np.clip(0.5 + (hairline - y) / cpx, 0.0, 1.0)
    cap = _ellipse(x, y, 0.5, fc_y, ax * 1.1, ay * 1.1, cpx) * above
    strands = 0.85 + 0.15 * np.sin(x * 180.0 + 3.0 * np.sin(y * 40.0))
    m = cap[..., None]
    img = img * (1 - m) + (hair * strands[..., None]) * m
    masks["hair"] = cap

    ex, ey = identity.eye_axes
    eye_y = fc_y + identity.eye_y
    eyes = np.zeros_like(face)
    open_ey = ey * (1.0 - pose.blink * 0.9)
    for side in (-1, 1):
        ecx = 0.5 + side * identity.eye_spacing
        sclera = _ellipse(x, y, ecx, eye_y, ex, open_ey, cpx)
        _paint(img, sclera, (0.93, 0.93, 0.90))
        iris = _ellipse(x, y, ecx, eye_y, ey * 0.95, ey * 0.95, cpx) * sclera
        _paint(img, iris, identity.iris)
        _paint(img, _ellipse(x, y, ecx, eye_y, ey * 0.4, ey * 0.4, cpx) * sclera, (0.03, 0.03, 0.03))
        brow = _ellipse(x, y, ecx, eye_y - ey * 2.0, ex * 1.2, identity.brow_thickness, cpx)
        _paint(img, brow, hair * 0.7)
        eyes = np.maximum(eyes, _ellipse(x, y, ecx, eye_y - ey * 0.6, ex * 1.5, ey * 3.2, cpx))
    masks["eyes"] = eyes

    nose_y = fc_y + identity.nose_length * 0.5
    _paint(
        img,
        0.35 * _ellipse(x, y, 0.5 + 0.01, nose_y, identity.nose_width * 0.5, identity.nose_length * 0.5, cpx),
        skin * 0.7,
    )
    for side in (-1, 1):
        nostril = _ellipse(
            x, y, 0.5 + side * identity.nose_width * 0.45, nose_y + identity.nose_length * 0.45, 0.008, 0.005, cpx
        )
        _paint(img, 0.8 * nostril, skin * 0.35)

    mouth_y = fc_y + identity.mouth_y
    mw = identity.mouth_width
    lip_h = 0.012 + pose.mouth_open * 0.045
    lips = _ellipse(x, y, 0.5, mouth_y, mw, lip_h, cpx)
    _paint(img, lips, identity.lips)
    if pose.mouth_open > 0.02:
        _paint(img, _ellipse(x, y, 0.5, mouth_y, mw * 0.8, lip_h * 0.6, cpx), (0.18, 0.05, 0.05))
    masks["mouth"] = _ellipse(x, y, 0.5, mouth_y, mw * 1.4, 0.05 + lip_h, cpx)
    masks["inner"] = _ellipse(x, y, 0.5, fc_y + 0.04, ax * 0.78, ay * 0.72, cpx) * face
    masks["skin"] = np.clip(face - cap - eyes - masks["mouth"], 0.0, 1.0)

    lx, ly = pose.light
    light = 1.0 + lx * (gx - 0.5) * 2.0 + ly * (gy - 0.5) * 2.0
    img = np.clip(img * light[..., None], 0.0, 1.0)
    return Rendered(image=img.astype(np.float32), masks={k: v.astype(np.float32) for k, v in masks.items()})


def _area_down(img: np.ndarray, factor: int) -> np.ndarray:
    h, w = img.shape[:2]
    shape = (h // factor, factor, w // factor, factor) + img.shape[2:]
    return img.reshape(shape).mean(axis=(1, 3))


def capture(
    identity: Identity, pose: Pose, size: int, rng: np.random.Generator, noise: tuple[float, float]
) -> Rendered:
    """A camera frame: rendered at 2x, area-downsampled, with sensor noise."""
    hi = render(identity, pose, size * 2)
    image = _area_down(hi.image, 2)
    sigma = rng.uniform(*noise)
    image = np.clip(image + rng.normal(0.0, sigma, image.shape).astype(np.float32), 0.0, 1.0)
    return Rendered(image=image, masks={k: _area_down(v, 2) for k, v in hi.masks.items()})


# --------------------------------------------------------------------------------------------
# Forgery methods


@dataclass
class Context:
    """What one generated image may use: its rng, the identity pool and the benchmark config."""

    rng: np.random.Generator
    config: SyntheticConfig

    @property
    def size(self) -> int:
        return self.config.image_size

    @property
    def strength(self) -> float:
        return self.config.fingerprint_strength

    def identity(self) -> Identity:
        return make_identity(self.config.seed, int(self.rng.integers(self.config.identities)))

    def frame(self, identity: Identity, pose: Pose | None = None) -> Rendered:
        return capture(identity, pose or make_pose(self.rng), self.size, self.rng, self.config.sensor_noise)


def _mix(base: np.ndarray, other: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None]
    return base * (1 - m) + other * m


def _resize(img: np.ndarray, size: int, order: int) -> np.ndarray:
    factor = size / img.shape[0]
    zoom = (factor, factor) + (1,) * (img.ndim - 2)
    out = ndimage.zoom(img, zoom, order=order, mode="nearest", grid_mode=True)
    return out[:size, :size]


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(img, sigma=(sigma, sigma) + (0,) * (img.ndim - 2), mode="nearest")


def _colour_transfer(src: np.ndarray, dst: np.ndarray, mask: np.ndarray, match_std: bool) -> np.ndarray:
    """Match the source's colour statistics inside the mask to the target's."""
    w = mask[..., None] + 1e-6
    total = w.sum(axis=(0, 1))
    mu_s, mu_d = (src * w).sum(axis=(0, 1)) / total, (dst * w).sum(axis=(0, 1)) / total
    if not match_std:
        return src - mu_s + mu_d
    sd_s = np.sqrt(((src - mu_s) ** 2 * w).sum(axis=(0, 1)) / total) + 1e-4
    sd_d = np.sqrt(((dst - mu_d) ** 2 * w).sum(axis=(0, 1)) / total) + 1e-4
    return (src - mu_s) / sd_s * sd_d + mu_d


def _swap_pair(ctx: Context) -> tuple[Rendered, Rendered, Pose]:
    """Target frame and a source identity's inner face rendered in the target's pose and head."""
    target_id, source_id = ctx.identity(), ctx.identity()
    pose = make_pose(ctx.rng)
    hybrid = replace(
        target_id,
        skin=source_id.skin,
        eye_spacing=source_id.eye_spacing,
        eye_axes=source_id.eye_axes,
        iris=source_id.iris,
        nose_length=source_id.nose_length,
        nose_width=source_id.nose_width,
        mouth_width=source_id.mouth_width,
        lips=source_id.lips,
        brow_thickness=source_id.brow_thickness,
    )
    return ctx.frame(target_id, pose), render(hybrid, pose, ctx.size), pose


def swap_autoencoder(ctx: Context) -> np.ndarray:
    """Deepfakes-like: low-resolution decoder output, elliptical mask, no colour correction."""
    target, source, _ = _swap_pair(ctx)
    low = ctx.size // 2
    face = _resize(_resize(source.image, low, 1), ctx.size, 1)
    mask = _blur(target.masks["inner"], 0.6)
    face = target.image + ctx.strength * (face - target.image)
    return _mix(target.image, face, mask)


def swap_graphics(ctx: Context) -> np.ndarray:
    """FaceSwap-like: hard-edged landmark-hull mask, mean colour matched, full resolution."""
    target, source, _ = _swap_pair(ctx)
    hull = (ndimage.binary_dilation(target.masks["inner"] > 0.5, iterations=1)).astype(np.float32)
    face = _colour_transfer(source.image, target.image, hull, match_std=False)
    face = target.image + ctx.strength * (face - target.image)
    return _mix(target.image, face, hull)


def swap_shifter(ctx: Context) -> np.ndarray:
    """FaceShifter-like: full resolution, wide feathered mask, mean+std colour transfer, sharpened."""
    target, source, _ = _swap_pair(ctx)
    face = _colour_transfer(source.image, target.image, target.masks["inner"], match_std=True)
    face = face + 0.6 * ctx.strength * (face - _blur(face, 1.0))
    mask = _blur(target.masks["inner"], 2.0)
    return _mix(target.image, face, mask)


def swap_pyramid(ctx: Context) -> np.ndarray:
    """Multi-band blend: the source's fine detail over the target's coarse shading."""
    target, source, _ = _swap_pair(ctx)
    mask = target.masks["inner"]
    detail = source.image - _blur(source.image, 1.5)
    coarse = _mix(_blur(target.image, 1.5), _blur(source.image, 1.5), _blur(mask, 3.0))
    blended = coarse + _mix(target.image - _blur(target.image, 1.5), detail, _blur(mask, 0.8))
    return target.image + ctx.strength * (blended - target.image)


def _warp(img: np.ndarray, dx: np.ndarray, dy: np.ndarray, order: int) -> np.ndarray:
    h, w = img.shape[:2]
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        out[..., c] = ndimage.map_coordinates(img[..., c], [yy + dy, xx + dx], order=order, mode="nearest")
    return out


def reenact_mouth_warp(ctx: Context) -> np.ndarray:
    """Face2Face-like: a radial warp opens/closes the mouth, bilinear resampling."""
    identity = ctx.identity()
    target = ctx.frame(identity)
    s = ctx.size
    m = target.masks["mouth"]
    ys, xs = np.nonzero(m > 0.5)
    cy, cx = (ys.mean(), xs.mean()) if len(ys) else (s * 0.7, s * 0.5)
    yy, xx = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    fall = np.exp(-(((yy - cy) / (s * 0.09)) ** 2 + ((xx - cx) / (s * 0.13)) ** 2))
    amp = ctx.rng.uniform(1.0, 2.0) * ctx.strength * ctx.rng.choice([-1.0, 1.0])
    dy = (-amp * np.tanh((yy - cy) / 2.0) * fall).astype(np.float32)
    return _warp(target.image, np.zeros_like(dy), dy, order=1)


def reenact_motion_field(ctx: Context) -> np.ndarray:
    """FOMM-like: a smooth dense motion field over the face, cubic (ringing) resampling."""
    identity = ctx.identity()
    target = ctx.frame(identity)
    s = ctx.size
    field = ctx.rng.normal(0, 1, (2, 4, 4))
    amp = 1.2 * ctx.strength
    dx, dy = (_resize(f[..., None], s, 3)[..., 0] * amp * target.masks["face"] for f in field)
    warped = _warp(target.image, dx.astype(np.float32), dy.astype(np.float32), order=3)
    return warped + 0.5 * ctx.strength * (warped - _blur(warped, 0.7)) * target.masks["face"][..., None]


_NEURAL_TEXTURE = np.random.default_rng(424242).normal(0.0, 1.0, (4, 4, 3)).astype(np.float32)


def reenact_neural_render(ctx: Context) -> np.ndarray:
    """NeuralTextures-like: the mouth re-rendered at low resolution with a learned-texture residue."""
    identity = ctx.identity()
    pose = make_pose(ctx.rng)
    target = ctx.frame(identity, pose)
    new_pose = replace(pose, mouth_open=float(ctx.rng.uniform(0.0, 0.35)))
    low = ctx.size // 2
    mouth = _resize(render(identity, new_pose, low).image, ctx.size, 0)
    reps = ctx.size // 4
    texture = np.tile(_NEURAL_TEXTURE, (reps, reps, 1)) * 0.025 * ctx.strength
    mask = _blur(target.masks["mouth"], 1.0)
    return _mix(target.image, mouth + texture, mask)


def _rgb_to_hsv(img: np.ndarray) -> np.ndarray:
    from matplotlib.colors import rgb_to_hsv

    return rgb_to_hsv(np.clip(img, 0, 1))


def _hsv_to_rgb(img: np.ndarray) -> np.ndarray:
    from matplotlib.colors import hsv_to_rgb

    return hsv_to_rgb(np.clip(img, 0, 1))


def edit_hair_colour(ctx: Context) -> np.ndarray:
    """Hair recolouring: hue rotated and saturation raised inside a soft hair mask."""
    target = ctx.frame(ctx.identity())
    hsv = _rgb_to_hsv(target.image)
    hsv[..., 0] = (hsv[..., 0] + ctx.rng.uniform(0.15, 0.85)) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * 1.4 + 0.15, 0, 1)
    edited = _blur(_hsv_to_rgb(hsv), 0.5)
    return _mix(target.image, edited, _blur(target.masks["hair"], 1.0) * min(1.0, ctx.strength))


def edit_beauty(ctx: Context) -> np.ndarray:
    """Beautification: skin smoothed (sensor noise removed), lips saturated, eyes brightened."""
    target = ctx.frame(ctx.identity())
    s = ctx.strength
    out = _mix(target.image, _blur(target.image, 1.2), target.masks["skin"] * min(1.0, s))
    hsv = _rgb_to_hsv(out)
    hsv[..., 1] = np.clip(hsv[..., 1] * (1 + 0.5 * s * target.masks["mouth"]), 0, 1)
    hsv[..., 2] = np.clip(hsv[..., 2] * (1 + 0.12 * s * target.masks["eyes"]), 0, 1)
    return _hsv_to_rgb(hsv)


def edit_attribute_gan(ctx: Context) -> np.ndarray:
    """StarGAN-like: the face passes a coarse encoder-decoder (2x2 blocks) and gets a colour cast."""
    target = ctx.frame(ctx.identity())
    coded = _resize(_area_down(target.image, 2), ctx.size, 0)
    cast = ctx.rng.normal(0, 0.04, 3).astype(np.float32) * ctx.strength
    mask = _blur(target.masks["face"], 1.5) * min(1.0, 0.8 * ctx.strength)
    return _mix(target.image, coded + cast, mask)


def _clean_render(ctx: Context, size: int) -> np.ndarray:
    return render(ctx.identity(), make_pose(ctx.rng), size).image


def generate_progan(ctx: Context) -> np.ndarray:
    """Transposed-convolution up-sampling: zero insertion + an uneven kernel -> checkerboard."""
    low = _clean_render(ctx, ctx.size // 2)
    up = np.zeros((ctx.size, ctx.size, 3), dtype=np.float32)
    up[::2, ::2] = low * 4.0
    k = np.array([[0.5, 1.0, 0.5], [1.0, 1.0, 1.0], [0.5, 1.0, 0.5]], dtype=np.float32)
    smooth = np.stack([ndimage.convolve(up[..., c], k / k.sum() * 1.0, mode="nearest") for c in range(3)], -1)
    plain = _resize(low, ctx.size, 1)
    return plain + 0.35 * ctx.strength * (smooth - plain)


def generate_stylegan(ctx: Context) -> np.ndarray:
    """Style-based GAN: crisp full-resolution image with periodic spectral peaks."""
    img = _clean_render(ctx, ctx.size)
    s = ctx.size
    yy, xx = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    phase = ctx.rng.uniform(0, 2 * np.pi)
    pattern = np.cos(2 * np.pi * xx / 4 + phase) + np.cos(2 * np.pi * yy / 4 + phase)
    return img + (0.012 * ctx.strength * pattern)[..., None]


def generate_latent_diffusion(ctx: Context) -> np.ndarray:
    """Latent diffusion: decoded from a 2x smaller latent (smooth), band-pass decoder noise, 8-px grid."""
    latent = _clean_render(ctx, ctx.size // 2)
    img = _resize(latent, ctx.size, 3)
    noise = ctx.rng.normal(0, 1, img.shape).astype(np.float32)
    band = _blur(noise, 0.7) - _blur(noise, 1.6)
    s = ctx.size
    grid = ((np.arange(s) % 8) == 0).astype(np.float32)
    grid = np.maximum(grid[:, None], grid[None, :])
    return img + ctx.strength * (0.04 * band + 0.008 * grid[..., None])


def generate_pixel_diffusion(ctx: Context) -> np.ndarray:
    """Pixel-space diffusion: over-smoothed (denoised) content, blue residual noise, saturated colour."""
    img = _blur(_clean_render(ctx, ctx.size), 0.6)
    noise = ctx.rng.normal(0, 1, img.shape).astype(np.float32)
    blue = noise - _blur(noise, 1.0)
    hsv = _rgb_to_hsv(img)
    hsv[..., 1] = np.clip(hsv[..., 1] * (1 + 0.15 * ctx.strength), 0, 1)
    return _hsv_to_rgb(hsv) + 0.035 * ctx.strength * blue


def real_camera(ctx: Context) -> np.ndarray:
    return ctx.frame(ctx.identity()).image


@dataclass(frozen=True)
class SyntheticMethod:
    """One class of the benchmark: its label, family and generating function."""

    label: int
    family: str
    name: str
    make: Callable[[Context], np.ndarray]

    @property
    def folder(self) -> str:
        return f"{self.label}_{self.family}_{self.name}"


METHODS: tuple[SyntheticMethod, ...] = (
    SyntheticMethod(0, "Real", "Camera", real_camera),
    SyntheticMethod(1, "Swap", "AutoEncoder", swap_autoencoder),
    SyntheticMethod(2, "Swap", "Graphics", swap_graphics),
    SyntheticMethod(3, "Swap", "Shifter", swap_shifter),
    SyntheticMethod(4, "Swap", "Pyramid", swap_pyramid),
    SyntheticMethod(5, "Reenact", "MouthWarp", reenact_mouth_warp),
    SyntheticMethod(6, "Reenact", "MotionField", reenact_motion_field),
    SyntheticMethod(7, "Reenact", "NeuralRender", reenact_neural_render),
    SyntheticMethod(8, "Edit", "HairColour", edit_hair_colour),
    SyntheticMethod(9, "Edit", "Beauty", edit_beauty),
    SyntheticMethod(10, "Edit", "AttributeGAN", edit_attribute_gan),
    SyntheticMethod(11, "Generate", "ProGAN", generate_progan),
    SyntheticMethod(12, "Generate", "StyleGAN", generate_stylegan),
    SyntheticMethod(13, "Generate", "LatentDiffusion", generate_latent_diffusion),
    SyntheticMethod(14, "Generate", "PixelDiffusion", generate_pixel_diffusion),
)


def generate_image(config: SyntheticConfig, method: SyntheticMethod, index: int) -> tuple[np.ndarray, int]:
    """One image as uint8 HxWx3 after JPEG re-encoding, and the identity it shows (its group)."""
    rng = np.random.default_rng([config.seed, method.label, index])
    identity_rng_state = rng.bit_generator.state
    identity = int(np.random.default_rng([config.seed, method.label, index]).integers(config.identities))
    rng.bit_generator.state = identity_rng_state
    ctx = Context(rng=rng, config=config)
    image = np.clip(method.make(ctx), 0.0, 1.0)
    pixels = np.round(image * 255.0).astype(np.uint8)
    quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB")), identity


def images_for(config: SyntheticConfig, method: SyntheticMethod) -> int:
    return config.real_images if method.label == 0 else config.images_per_method


def _write_one(job: tuple[SyntheticConfig, int, int, str]) -> None:
    config, label, index, out_dir = job
    method = METHODS[label]
    pixels, identity = generate_image(config, method, index)
    path = Path(out_dir) / method.folder / f"id{identity:04d}" / f"{index:05d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG", compress_level=6)


def write_benchmark(
    config: SyntheticConfig, out_dir: Path, workers: int | None = None, progress: Callable[[int], None] | None = None
) -> int:
    """Write every class folder as PNGs under out_dir; returns the number of images."""
    jobs = [(config, method.label, i, str(out_dir)) for method in METHODS for i in range(images_for(config, method))]
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    if workers <= 1:
        for job in jobs:
            _write_one(job)
            if progress:
                progress(1)
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_one, jobs, chunksize=16):
                if progress:
                    progress(1)
    return len(jobs)
