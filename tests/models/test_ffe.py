"""FFE block (CAL's DCT attention): DCT conventions, module output, gradients, model integration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.markers import requires_cuda
from scipy import fft as sfft

from owdfa.models.ffe import FrequencyAttention, dct2, dct_matrix, idct2, idct_matrix

SIZES = [(8, 8), (7, 12), (16, 5), (1, 3), (32, 24)]


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_dct2_matches_scipy_float64(h: int, w: int) -> None:
    x = np.random.default_rng(h * 100 + w).standard_normal((2, 3, h, w))
    ref = sfft.dctn(x, type=2, norm=None, axes=(-2, -1))
    out = dct2(torch.from_numpy(x))
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_dct2_matches_scipy_float32(h: int, w: int) -> None:
    x = np.random.default_rng(h + w).standard_normal((2, 3, h, w)).astype(np.float32)
    ref = sfft.dctn(x.astype(np.float64), type=2, norm=None, axes=(-2, -1))
    out = dct2(torch.from_numpy(x))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_idct2_is_exact_inverse_and_matches_scipy(h: int, w: int) -> None:
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    coeffs = dct2(x)
    torch.testing.assert_close(idct2(coeffs), x, rtol=1e-10, atol=1e-10)
    ref = sfft.idctn(coeffs.numpy(), type=2, norm=None, axes=(-2, -1))
    np.testing.assert_allclose(idct2(coeffs).numpy(), ref, rtol=1e-7, atol=1e-10)
    x32 = x.float()
    torch.testing.assert_close(idct2(dct2(x32)), x32, rtol=1e-5, atol=1e-5)


def test_matrices_are_inverse_and_cached() -> None:
    for n in (1, 2, 9, 64):
        eye = dct_matrix(n, dtype=torch.float64) @ idct_matrix(n, dtype=torch.float64)
        torch.testing.assert_close(eye, torch.eye(n, dtype=torch.float64))
    assert dct_matrix(11) is dct_matrix(11)
    assert dct_matrix(11) is not dct_matrix(11, dtype=torch.float64)


def test_dct2_under_bf16_autocast_is_float32() -> None:
    x = torch.randn(2, 3, 16, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dct2(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, dct2(x))


def test_module_output_shape_and_range() -> None:
    torch.manual_seed(0)
    ffe = FrequencyAttention()
    x = torch.randn(2, 3, 20, 28)
    a = ffe(x)
    assert a.shape == (2, 1, 20, 28)
    assert a.dtype == torch.float32
    assert torch.isfinite(a).all() and (a > 0).all() and (a < 1).all()


def test_unit_mask_gives_sigmoid_of_channel_mean() -> None:
    """conv2 weight 0 and bias 50 -> M == 1 exactly in float32, so IDCT(F * M) == x."""
    torch.manual_seed(0)
    ffe = FrequencyAttention()
    with torch.no_grad():
        ffe.conv2.weight.zero_()
        ffe.conv2.bias.fill_(50.0)
    x = torch.randn(3, 3, 24, 16)
    coeffs = dct2(x)
    assert torch.equal(ffe.mask(coeffs), torch.ones(3, 1, 24, 16))
    torch.testing.assert_close(ffe(x), torch.sigmoid(x.mean(dim=1, keepdim=True)), rtol=1e-5, atol=1e-5)


def test_learned_mask_matches_scipy_reference() -> None:
    """A with a random (default-init) mask equals sigmoid(mean_c(scipy idctn(dctn(x) * M)))."""
    torch.manual_seed(1)
    ffe = FrequencyAttention().double()
    x = torch.randn(2, 3, 12, 10, dtype=torch.float64)
    coeffs = sfft.dctn(x.numpy(), type=2, norm=None, axes=(-2, -1))
    with torch.no_grad():
        mask = ffe.mask(torch.from_numpy(coeffs)).numpy()
        out = ffe(x).numpy()
    assert mask.min() < 0.99  # the mask is not trivially 1
    spatial = sfft.idctn(coeffs * mask, type=2, norm=None, axes=(-2, -1))
    ref = 1.0 / (1.0 + np.exp(-spatial.mean(axis=1, keepdims=True)))
    np.testing.assert_allclose(out, ref, rtol=1e-7, atol=1e-9)


def test_gradients_reach_mask_convs() -> None:
    torch.manual_seed(0)
    ffe = FrequencyAttention()
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    ffe(x).pow(2).sum().backward()
    for param in (ffe.conv1.weight, ffe.conv1.bias, ffe.conv2.weight, ffe.conv2.bias):
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_deterministic_and_bf16_autocast() -> None:
    torch.manual_seed(0)
    ffe = FrequencyAttention()
    x = torch.randn(2, 3, 16, 24)
    a1, a2 = ffe(x), ffe(x)
    assert torch.equal(a1, a2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a3 = ffe(x)
    assert a3.dtype == torch.float32
    torch.testing.assert_close(a3, a1)


@requires_cuda
def test_cuda_bf16_autocast_matches_cpu() -> None:
    torch.manual_seed(0)
    ffe = FrequencyAttention()
    x = torch.randn(2, 3, 32, 48)
    ref = ffe(x)
    ffe_gpu, x_gpu = ffe.cuda(), x.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = ffe_gpu(x_gpu)
    assert out.dtype == torch.float32 and out.shape == (2, 1, 32, 48)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)


def test_non_4d_input_rejected() -> None:
    with pytest.raises(ValueError):
        FrequencyAttention()(torch.randn(3, 8, 8))


def _ffe_model_and_images():
    """A seeded test_resnet with FFE (eval mode) and two random 64 px uint8 images."""
    from owdfa.models import AttributionModel

    torch.manual_seed(0)
    model = AttributionModel("test_resnet", 5, ffe=True).eval()
    return model, torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)


def test_model_with_ffe_forward() -> None:
    model, images = _ffe_model_and_images()
    with torch.no_grad():
        out = model(images)
    assert out["attention"].shape == (2, 1, 64, 64)
    assert ((out["attention"] > 0) & (out["attention"] < 1)).all()
    assert out["logits"].shape == (2, 5)
    assert torch.isfinite(out["features"]).all()


# --- FFE pooling: the official order (8x8 grid pool, then bilinear) at every input size -------------


def _grid_pool_by_hand(a: np.ndarray, cells: int) -> np.ndarray:
    """Per axis stride = size // cells, kernel = size - (cells - 1) * stride, plain window means."""
    h, w = a.shape
    sh, sw = h // cells, w // cells
    kh, kw = h - (cells - 1) * sh, w - (cells - 1) * sw
    out = np.empty((cells, cells))
    for i in range(cells):
        for j in range(cells):
            out[i, j] = a[i * sh : i * sh + kh, j * sw : j * sw + kw].mean()
    return out


def _bilinear_by_hand(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """align_corners=False: source = (dst + 0.5) * in / out - 0.5, clamped at 0, linear between neighbours."""

    def taps(n_in: int, n_out: int) -> list[tuple[int, int, float]]:
        result = []
        for d in range(n_out):
            src = max((d + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = int(np.floor(src))
            i1 = min(i0 + 1, n_in - 1)
            result.append((i0, i1, src - i0))
        return result

    out = np.empty((out_h, out_w))
    for y, (y0, y1, ly) in enumerate(taps(a.shape[0], out_h)):
        for x, (x0, x1, lx) in enumerate(taps(a.shape[1], out_w)):
            top = a[y0, x0] * (1 - lx) + a[y0, x1] * lx
            bottom = a[y1, x0] * (1 - lx) + a[y1, x1] * lx
            out[y, x] = top * (1 - ly) + bottom * ly
    return out


@pytest.mark.parametrize(
    ("size", "fmap"),
    [(64, 2), (96, 3), (100, 4), (240, 8), (256, 8)],  # test_resnet at 64 px; resnet50's /32 map otherwise
)
def test_ffe_weights_pool_to_8x8_then_resize_by_hand(size: int, fmap: int) -> None:
    from owdfa.models.prototype import ffe_weights

    rng = np.random.default_rng(size)
    attention = rng.random((size, size))
    expected = _grid_pool_by_hand(attention, 8)
    if fmap != 8:
        expected = _bilinear_by_hand(expected, fmap, fmap)
    got = ffe_weights(torch.from_numpy(attention)[None, None], (fmap, fmap))[0, 0].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_ffe_weights_overlap_at_100px() -> None:
    # 100 px: stride 12, kernel 16 -> windows [0:16], [12:28], ..., [84:100] (overlapping by 4)
    from owdfa.models.prototype import ffe_weights

    attention = torch.zeros(1, 1, 100, 100, dtype=torch.float64)
    attention[..., 12:16, :] = 1.0  # rows inside windows 0 and 1 only
    pooled = ffe_weights(attention, (8, 8))[0, 0]
    assert torch.allclose(pooled[0], torch.full((8,), 4 / 16, dtype=torch.float64))
    assert torch.allclose(pooled[1], torch.full((8,), 4 / 16, dtype=torch.float64))
    assert torch.count_nonzero(pooled[2:]) == 0


def test_model_reweights_the_feature_map_with_the_official_ffe_map() -> None:
    # At 64 px test_resnet's map is 2x2: the official map is the 8x8 pool resized bilinearly, which
    # (align_corners=False, 8 -> 2) averages 8x8 cells 1,2 and 5,6 of each axis -- not the 32x32 means.
    model, images = _ffe_model_and_images()
    with torch.no_grad():
        out = model(images)
        x = model.normalise(images)
        fmap = model.backbone.forward_features(x)
        cells = _grid_pool_by_hand(out["attention"][0, 0].double().numpy(), 8)
        by_hand = np.array(
            [
                [cells[[1, 2]][:, [1, 2]].mean(), cells[[1, 2]][:, [5, 6]].mean()],
                [cells[[5, 6]][:, [1, 2]].mean(), cells[[5, 6]][:, [5, 6]].mean()],
            ]
        )
        weighted = fmap[:1] * torch.from_numpy(by_hand).float()
        expected = model.neck(model.backbone.forward_head(weighted, pre_logits=True))  # eval BN: per row
    torch.testing.assert_close(out["features"][:1], expected, rtol=1e-5, atol=1e-5)
