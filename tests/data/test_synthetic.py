"""The synthetic benchmark generator: determinism, class layout and every method's own fingerprint.

Two kinds of fingerprint checks:

* on the public images (`generate_image`, JPEG quality 100, no sensor noise, fingerprint_strength 3)
  averaged over ~20 images per class and compared with the real class - the spectral traces of the
  synthesis family;
* controlled comparisons through the module's internals: a method and the unmanipulated frame are
  drawn from two generators seeded alike, so they show the same identity, pose and noise, and the
  difference is exactly the manipulation (swap, reenactment and editing families).

`fingerprint_strength=0` switches every trace off while keeping all random draws, so it serves as
the "fingerprint removed" control: each statistic must collapse there.
"""

from __future__ import annotations

import functools
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from owdfa.data import synthetic as syn
from owdfa.data.synthetic import (
    METHODS,
    REAL_FOLDER,
    Context,
    SyntheticConfig,
    generate_image,
    images_for,
    write_benchmark,
)

N_IMAGES = 20
SPECTRAL = SyntheticConfig(
    seed=11,
    image_size=32,
    identities=12,
    real_images=N_IMAGES,
    images_per_method=N_IMAGES,
    fingerprint_strength=3.0,
    jpeg_quality=(100, 100),
    sensor_noise=(0.0, 0.0),
)
CONTROLLED = SyntheticConfig(seed=3, image_size=64, identities=20, fingerprint_strength=1.0, sensor_noise=(0.0, 0.0))
SEEDS = range(6)


def method(label: int) -> syn.SyntheticMethod:
    return METHODS[label]


# --------------------------------------------------------------------------------------------
# Class layout


def test_class_layout():
    labels = [m.label for m in METHODS]
    assert labels == list(range(len(METHODS)))
    assert len(METHODS) >= 13  # real + at least 12 forgery methods
    assert METHODS[0].family == "Real" and METHODS[0].folder == REAL_FOLDER
    families = {m.family for m in METHODS if m.label != 0}
    assert len(families) >= 4
    assert {"Swap", "Reenact", "Edit", "Generate"} <= families
    assert "Real" not in families
    for m in METHODS:
        assert re.fullmatch(r"\d+_[A-Za-z]+_[A-Za-z]+", m.folder), m.folder
        assert m.folder == f"{m.label}_{m.family}_{m.name}"
    assert len({m.folder for m in METHODS}) == len(METHODS)
    assert len({m.make for m in METHODS}) == len(METHODS)  # every class has its own generator


# --------------------------------------------------------------------------------------------
# Determinism

TINY = SyntheticConfig(seed=5, image_size=16, identities=6, real_images=3, images_per_method=2)


@pytest.mark.parametrize("label", range(len(METHODS)))
def test_generate_image_is_deterministic(label):
    a, id_a = generate_image(TINY, method(label), 1)
    b, id_b = generate_image(TINY, method(label), 1)
    assert a.dtype == np.uint8 and a.shape == (16, 16, 3)
    assert np.array_equal(a, b)
    assert id_a == id_b and 0 <= id_a < TINY.identities


def test_generate_image_depends_on_seed_label_and_index():
    base, _ = generate_image(TINY, method(0), 0)
    assert not np.array_equal(base, generate_image(replace(TINY, seed=6), method(0), 0)[0])
    assert not np.array_equal(base, generate_image(TINY, method(0), 1)[0])
    assert not np.array_equal(base, generate_image(TINY, method(1), 0)[0])


def test_generate_image_is_a_pure_function_of_its_arguments():
    jobs = [(label, index) for label in range(len(METHODS)) for index in range(2)]
    forward = {job: generate_image(TINY, method(job[0]), job[1]) for job in jobs}
    backward = {job: generate_image(TINY, method(job[0]), job[1]) for job in reversed(jobs)}
    for job in jobs:
        assert np.array_equal(forward[job][0], backward[job][0]), job
        assert forward[job][1] == backward[job][1]


def test_identities_are_shared_by_real_and_fake_classes():
    config = replace(TINY, identities=4)
    real_ids = {generate_image(config, method(0), i)[1] for i in range(12)}
    fake_ids = {generate_image(config, method(2), i)[1] for i in range(12)}
    assert len(real_ids & fake_ids) >= 2


# --------------------------------------------------------------------------------------------
# Spectral fingerprints of the synthesis family, on the public images

_FREQ = np.fft.fftfreq(SPECTRAL.image_size)
_RADIUS = np.hypot(_FREQ[:, None], _FREQ[None, :])


@functools.cache
def grey_images(label: int, strength: float) -> np.ndarray:
    config = replace(SPECTRAL, fingerprint_strength=strength)
    images = [generate_image(config, method(label), i)[0] for i in range(N_IMAGES)]
    return np.stack(images).astype(np.float64).mean(axis=-1) / 255.0


@functools.cache
def power(label: int, strength: float = 3.0) -> np.ndarray:
    """Per-image power spectra of the grey images (DC removed), N x S x S."""
    grey = grey_images(label, strength)
    grey = grey - grey.mean(axis=(1, 2), keepdims=True)
    return np.abs(np.fft.fft2(grey)) ** 2


def nyquist_share(label: int, strength: float = 3.0) -> float:
    """Share of the energy at the period-2 frequencies (0, 1/2), (1/2, 0), (1/2, 1/2): a checkerboard."""
    s, h = power(label, strength), SPECTRAL.image_size // 2
    return float(np.mean((s[:, h, h] + s[:, 0, h] + s[:, h, 0]) / s.sum(axis=(1, 2))))


def quarter_peak(label: int, strength: float = 3.0) -> float:
    """Mean power at 1/4 cycles/pixel (on both axes) over the mean power of its axis neighbours."""
    s, q = power(label, strength).mean(axis=0), SPECTRAL.image_size // 4
    peak = s[0, q] + s[q, 0]
    neighbours = (s[0, q - 1] + s[0, q + 1] + s[q - 1, 0] + s[q + 1, 0]) / 2
    return float(peak / neighbours)


def high_share(label: int, strength: float = 3.0, cutoff: float = 0.4) -> float:
    """Share of the energy above `cutoff` cycles/pixel (radially)."""
    s, radius = power(label, strength), _RADIUS
    return float(np.mean(s[:, radius > cutoff].sum(axis=1) / s.sum(axis=(1, 2))))


def test_progan_leaves_a_checkerboard():
    # Zero-insertion up-sampling with an uneven kernel: measured ~0.27 vs ~0.001 for real.
    assert nyquist_share(11) > 20 * nyquist_share(0)
    assert nyquist_share(11) > 0.05
    # Same draws, fingerprint off: the checkerboard is gone.
    assert nyquist_share(11, strength=0.0) < 0.1 * nyquist_share(11)
    # Other synthesis methods do not leave it.
    for label in (12, 13, 14):
        assert nyquist_share(11) > 20 * nyquist_share(label), label


def test_stylegan_has_a_spectral_peak_at_a_quarter_cycle_per_pixel():
    # Measured ~20x for StyleGAN, ~1x for real and for StyleGAN with the fingerprint off.
    assert quarter_peak(12) > 5.0
    assert quarter_peak(0) < 3.0
    assert quarter_peak(12, strength=0.0) < 3.0
    assert quarter_peak(12) > 3 * quarter_peak(0)


def test_pixel_diffusion_blue_noise_beats_latent_diffusion_at_the_highest_frequencies():
    # Measured share above 0.4 cycles/pixel: PixelDiffusion ~0.19, LatentDiffusion ~0.02, real ~0.03.
    assert high_share(14) > 4 * high_share(13)
    assert high_share(14) > 3 * high_share(0)
    assert high_share(14) > 4 * high_share(14, strength=0.0)
    # Latent diffusion is decoded from a 2x smaller latent: less top-band energy than real.
    assert high_share(13) < high_share(0)


def _grid_contrast(grey: np.ndarray) -> np.ndarray:
    """Per image: mean on the 8-pixel grid lines minus mean on the lines next to them."""
    pos = np.arange(grey.shape[1]) % 8
    on = (pos == 0)[:, None] | (pos == 0)[None, :]
    near = ((pos == 1) | (pos == 7))[:, None] | ((pos == 1) | (pos == 7))[None, :]
    near &= ~on
    return grey[:, on].mean(axis=1) - grey[:, near].mean(axis=1)


def test_latent_diffusion_leaves_an_eight_pixel_grid():
    # The grid adds 0.008 * strength = 0.024 on every 8th row/column; paired with strength 0.
    paired = _grid_contrast(grey_images(13, 3.0)) - _grid_contrast(grey_images(13, 0.0))
    assert paired.mean() > 0.015
    assert abs(_grid_contrast(grey_images(0, 3.0)).mean()) < 0.01
    assert abs((_grid_contrast(grey_images(14, 3.0)) - _grid_contrast(grey_images(14, 0.0))).mean()) < 0.005


# --------------------------------------------------------------------------------------------
# Controlled comparisons: the same frame with and without the manipulation


def ctx(seed: int, **changes) -> Context:
    return Context(rng=np.random.default_rng(seed), config=replace(CONTROLLED, **changes))


def camera_frame(seed: int, **changes) -> syn.Rendered:
    """The frame `real_camera` (and every edit / reenactment target) draws first for this seed."""
    c = ctx(seed, **changes)
    return c.frame(c.identity())


def hf_energy(image: np.ndarray, mask: np.ndarray, sigma: float = 1.0) -> float:
    """Mean squared high-pass residual (image - Gaussian blur) inside a boolean mask."""
    residual = image - ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0), mode="nearest")
    return float((residual**2).sum(axis=-1)[mask].mean())


def blur(mask: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(mask, sigma=sigma, mode="nearest")


def changed(a: np.ndarray, b: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    return np.abs(a - b).max(axis=-1) > tol


def test_real_camera_is_the_unmanipulated_target_frame():
    for seed in SEEDS:
        assert np.array_equal(syn.real_camera(ctx(seed)), camera_frame(seed).image)


@pytest.mark.parametrize(
    "make", [syn.swap_autoencoder, syn.swap_graphics, syn.swap_shifter, syn.swap_pyramid], ids=lambda f: f.__name__
)
def test_swaps_change_the_target_and_vanish_at_strength_zero(make):
    for seed in SEEDS:
        target, _, _ = syn._swap_pair(ctx(seed))
        assert changed(make(ctx(seed)), target.image).sum() > 100
        if make is not syn.swap_shifter:  # the shifter's colour transfer is not a fingerprint knob
            off = make(ctx(seed, fingerprint_strength=0.0))
            assert np.allclose(off, target.image, atol=1e-5)


def test_swap_autoencoder_pastes_a_low_resolution_face():
    ratios = []
    for seed in SEEDS:
        target, source, _ = syn._swap_pair(ctx(seed))
        out = syn.swap_autoencoder(ctx(seed))
        soft_mask = blur(target.masks["inner"], 0.6)
        core = soft_mask > 0.99
        assert core.sum() > 100
        assert np.array_equal(out[soft_mask == 0], target.image[soft_mask == 0])
        ratios.append(hf_energy(out, core) / hf_energy(source.image, core))
    # The half-resolution decoder keeps ~10% of the source face's fine detail.
    assert np.mean(ratios) < 0.4


def test_swap_graphics_leaves_a_hard_mask_edge_and_matches_mean_colour():
    for seed in SEEDS:
        target, source, _ = syn._swap_pair(ctx(seed))
        out = syn.swap_graphics(ctx(seed))
        hull = ndimage.binary_dilation(target.masks["inner"] > 0.5, iterations=1)
        diff = changed(out, target.image)
        # Binary mask: nothing changes outside the hull (no feathering), most of the hull changes.
        assert not (diff & ~hull).any()
        assert diff[hull].mean() > 0.9
        # Mean colour transfer: inside the hull the mean equals the target's, not the source's.
        assert np.allclose(out[hull].mean(axis=0), target.image[hull].mean(axis=0), atol=1e-3)
        assert np.abs(source.image[hull].mean(axis=0) - target.image[hull].mean(axis=0)).max() > 0.05


def test_swap_shifter_feathers_wide_and_sharpens():
    gains = []
    for seed in SEEDS:
        target, source, _ = syn._swap_pair(ctx(seed))
        out = syn.swap_shifter(ctx(seed))
        hull = ndimage.binary_dilation(target.masks["inner"] > 0.5, iterations=1)
        # A sigma-2 feathered mask: changes reach well beyond the hard hull.
        assert (changed(out, target.image) & ~hull).sum() > 0.5 * hull.sum()
        core = blur(target.masks["inner"], 2.0) > 0.98
        transferred = syn._colour_transfer(source.image, target.image, target.masks["inner"], match_std=True)
        gains.append(hf_energy(out, core) / hf_energy(transferred, core))
        sharpened_off = syn.swap_shifter(ctx(seed, fingerprint_strength=0.0))
        assert hf_energy(out, core) > 1.5 * hf_energy(sharpened_off, core)
    # Unsharp masking with amount 0.6: high-pass energy ~2.2x the colour-transferred source's.
    assert np.mean(gains) > 1.6


def test_swap_pyramid_keeps_the_source_detail_over_a_wide_coarse_blend():
    for seed in SEEDS:
        target, source, _ = syn._swap_pair(ctx(seed))
        out = syn.swap_pyramid(ctx(seed))
        core = blur(target.masks["inner"], 2.0) > 0.98

        def detail(img, core=core):
            return (img - ndimage.gaussian_filter(img, sigma=(1.5, 1.5, 0), mode="nearest"))[core].ravel()

        assert np.corrcoef(detail(out), detail(source.image))[0, 1] > 0.98
        # The coarse band is blended with a sigma-3 mask: the change spreads far outside the face.
        hull = ndimage.binary_dilation(target.masks["inner"] > 0.5, iterations=1)
        assert (changed(out, target.image) & ~hull).sum() > 0.5 * hull.sum()


def test_reenact_mouth_warp_only_moves_the_mouth():
    for seed in SEEDS:
        frame = camera_frame(seed)
        out = syn.reenact_mouth_warp(ctx(seed, fingerprint_strength=2.0))
        energy = ((out - frame.image) ** 2).sum(axis=-1)
        assert energy.sum() > 0.1
        near_mouth = blur(frame.masks["mouth"], 3.0) > 0.01
        assert energy[near_mouth].sum() > 0.9 * energy.sum()
        off = syn.reenact_mouth_warp(ctx(seed, fingerprint_strength=0.0))
        assert np.allclose(off, frame.image, atol=1e-5)


def test_reenact_motion_field_warps_the_whole_face_and_nothing_else():
    for seed in SEEDS:
        frame = camera_frame(seed)
        out = syn.reenact_motion_field(ctx(seed))
        energy = ((out - frame.image) ** 2).sum(axis=-1)
        assert energy[frame.masks["face"] == 0].max() < 1e-8
        assert energy[frame.masks["face"] > 0.9].mean() > 1e-3
        # Unlike the mouth warp, the eyes move too.
        assert energy[frame.masks["eyes"] > 0.5].mean() > 1e-3


def test_reenact_neural_render_leaves_a_fixed_periodic_texture_in_the_mouth():
    patterns = []
    for seed in SEEDS[:3]:
        frame = camera_frame(seed, fingerprint_strength=3.0)
        mask = blur(frame.masks["mouth"], 1.0)
        on = syn.reenact_neural_render(ctx(seed, fingerprint_strength=3.0))
        off = syn.reenact_neural_render(ctx(seed, fingerprint_strength=0.0))
        # Only the mouth is re-rendered.
        assert np.array_equal(on[mask == 0], frame.image[mask == 0])
        assert changed(off, frame.image).sum() > 0
        # The strength-controlled part is one 4x4 texture tile, the same in every image.
        select = mask > 0.05
        residue = (on - off)[select] / mask[select][:, None]
        ys, xs = np.nonzero(select)
        pattern = np.zeros((4, 4, 3))
        pattern[ys % 4, xs % 4] = residue
        assert np.allclose(residue, pattern[ys % 4, xs % 4], atol=1e-4)
        assert np.abs(residue).max() > 0.05
        patterns.append(pattern)
    assert np.allclose(patterns[0], patterns[1], atol=1e-4)
    assert np.allclose(patterns[0], patterns[2], atol=1e-4)


def _hsv(image: np.ndarray) -> np.ndarray:
    from matplotlib.colors import rgb_to_hsv

    return rgb_to_hsv(np.clip(image, 0, 1))


def test_edit_hair_colour_rotates_hue_and_saturates_only_the_hair():
    hue_shifts, sat_gains = [], []
    for seed in SEEDS:
        frame = camera_frame(seed)
        out = syn.edit_hair_colour(ctx(seed))
        hair = frame.masks["hair"] > 0.9
        assert hair.sum() > 50
        before, after = _hsv(frame.image)[hair], _hsv(out)[hair]
        circular = np.abs((after[:, 0] - before[:, 0] + 0.5) % 1.0 - 0.5)
        hue_shifts.append(np.median(circular))
        sat_gains.append(after[:, 1].mean() - before[:, 1].mean())
        outside = blur(frame.masks["hair"], 1.0) == 0
        assert np.array_equal(out[outside], frame.image[outside])
        off = syn.edit_hair_colour(ctx(seed, fingerprint_strength=0.0))
        assert np.allclose(off, frame.image, atol=1e-6)
    # Hue rotated by 0.15-0.85 turns (circular distance >= 0.15), saturation raised.
    assert np.mean(hue_shifts) > 0.15
    assert min(sat_gains) > 0.05


def test_edit_beauty_smooths_the_skin_and_saturates_the_lips():
    ratios, lip_gains = [], []
    for seed in SEEDS:
        noisy = {"sensor_noise": (0.02, 0.02)}
        frame = camera_frame(seed, **noisy)
        out = syn.edit_beauty(ctx(seed, **noisy))
        skin = frame.masks["skin"] > 0.9
        ratios.append(hf_energy(out, skin) / hf_energy(frame.image, skin))
        lips = frame.masks["mouth"] > 0.9
        lip_gains.append(_hsv(out)[lips][:, 1].mean() - _hsv(frame.image)[lips][:, 1].mean())
        untouched = (frame.masks["skin"] == 0) & (frame.masks["mouth"] == 0) & (frame.masks["eyes"] == 0)
        assert np.allclose(out[untouched], frame.image[untouched], atol=1e-5)
    # Sensor noise is blurred away on the skin: ~10-20% of the high-pass energy remains.
    assert max(ratios) < 0.5
    assert min(lip_gains) > 0.05


def test_edit_attribute_gan_codes_the_face_in_two_by_two_blocks():
    size = CONTROLLED.image_size
    for seed in SEEDS:
        frame = camera_frame(seed, sensor_noise=(0.01, 0.01))
        out = syn.edit_attribute_gan(ctx(seed, sensor_noise=(0.01, 0.01), fingerprint_strength=2.0))
        inside = blur(frame.masks["face"], 1.5) > 0.999
        core = inside.reshape(size // 2, 2, size // 2, 2).all(axis=(1, 3))
        assert core.sum() > 50

        def block_variance(img, core=core):
            blocks = img.reshape(size // 2, 2, size // 2, 2, 3)
            return blocks.var(axis=(1, 3)).mean(axis=-1)[core].mean()

        assert block_variance(out) < 1e-6
        assert block_variance(frame.image) > 1e-4
        outside = blur(frame.masks["face"], 1.5) == 0
        assert np.array_equal(out[outside], frame.image[outside])


def test_generators_are_camera_free_renders_plus_their_trace():
    """StyleGAN = the clean render + a period-4 cosine pattern, exactly."""
    for seed in SEEDS[:3]:
        c = ctx(seed, fingerprint_strength=3.0)
        clean = syn.render(c.identity(), syn.make_pose(c.rng), CONTROLLED.image_size).image
        trace = (syn.generate_stylegan(ctx(seed, fingerprint_strength=3.0)) - clean)[..., 0]
        assert np.allclose(trace, np.roll(trace, 4, axis=0), atol=1e-5)
        assert np.allclose(trace, np.roll(trace, 4, axis=1), atol=1e-5)
        assert np.abs(trace).max() > 0.05


def test_identity_and_pose_helpers_are_deterministic():
    assert syn.make_identity(1, 3) == syn.make_identity(1, 3)
    assert syn.make_identity(1, 3) != syn.make_identity(1, 4)
    assert syn.make_pose(np.random.default_rng(0)) == syn.make_pose(np.random.default_rng(0))
    rendered = syn.render(syn.make_identity(1, 3), syn.make_pose(np.random.default_rng(0)), 32)
    assert rendered.image.shape == (32, 32, 3) and rendered.image.dtype == np.float32
    assert rendered.image.min() >= 0.0 and rendered.image.max() <= 1.0
    assert {"face", "hair", "eyes", "mouth", "inner", "skin"} <= set(rendered.masks)


# --------------------------------------------------------------------------------------------
# write_benchmark


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_benchmark_layout_and_byte_identical_reruns(tmp_path):
    ticks = []
    count = write_benchmark(TINY, tmp_path / "a", workers=1, progress=ticks.append)
    expected_total = TINY.real_images + (len(METHODS) - 1) * TINY.images_per_method
    assert count == expected_total == sum(images_for(TINY, m) for m in METHODS)
    assert sum(ticks) == expected_total

    first = _tree(tmp_path / "a")
    assert len(first) == expected_total
    assert all(name.endswith(".png") for name in first)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(m.folder for m in METHODS)
    for m in METHODS:
        files = sorted((tmp_path / "a" / m.folder).rglob("*.png"))
        assert [f.name for f in sorted(files, key=lambda f: f.name)] == [
            f"{i:05d}.png" for i in range(images_for(TINY, m))
        ]
        for f in files:
            assert re.fullmatch(r"id\d{4}", f.parent.name)
            assert f.parent.parent.name == m.folder
            index = int(f.stem)
            pixels, identity = generate_image(TINY, m, index)
            assert f.parent.name == f"id{identity:04d}"
            with Image.open(f) as img:
                assert img.format == "PNG"
                assert np.array_equal(np.asarray(img.convert("RGB")), pixels)

    write_benchmark(TINY, tmp_path / "b", workers=1)
    assert _tree(tmp_path / "b") == first
