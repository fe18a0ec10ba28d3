"""FFE block (CAL's DCT attention): DCT conventions, module output, gradients, model integration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
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


def test_model_with_ffe_forward() -> None:
    from owdfa.models import AttributionModel

    torch.manual_seed(0)
    model = AttributionModel("test_resnet", 5, ffe=True).eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        out = model(images)
    assert out["attention"].shape == (2, 1, 64, 64)
    assert ((out["attention"] > 0) & (out["attention"] < 1)).all()
    assert out["logits"].shape == (2, 5)
    assert torch.isfinite(out["features"]).all()
