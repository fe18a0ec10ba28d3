"""CAL's frequency-guided feature enhancement (FFE): a DCT attention map of the input image.

On the ImageNet-normalised input x (B x 3 x H x W):

* F = unnormalised 2-D DCT-II of every channel over H and W, in the convention of
  ``scipy.fft.dctn(type=2, norm=None)``: ``X_k = 2 * sum_n x_n cos(pi k (2n + 1) / (2N))`` along each axis;
* M = sigmoid(conv3x3(16->1)(ReLU(conv3x3(3->16)(F)))), padding 1, default PyTorch init (B x 1 x H x W);
* A = sigmoid(channel-mean(IDCT2(F * M))), IDCT2 the exact inverse of the DCT above (B x 1 x H x W).

The transforms are two matrix products with DCT-II matrices cached per (size, device, dtype). They run in
float32 (float64 for float64 input), and the whole block runs with autocast disabled: the unnormalised
coefficients reach ~4*H*W in magnitude, which low-precision convs/products would handle poorly, and the
block is tiny next to the backbone.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["FrequencyAttention", "dct2", "idct2", "dct_matrix", "idct_matrix"]

_CACHE: dict[tuple[str, int, torch.device, torch.dtype], torch.Tensor] = {}


def _transform_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _matrix(kind: str, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    key = (kind, n, torch.device(device), dtype)
    mat = _CACHE.get(key)
    if mat is None:
        k = torch.arange(n, dtype=torch.float64).unsqueeze(1)  # rows: frequency k
        i = torch.arange(n, dtype=torch.float64).unsqueeze(0)  # cols: sample n
        cos = torch.cos(math.pi * k * (2 * i + 1) / (2 * n))  # cos[k, n]
        if kind == "dct":
            mat = 2.0 * cos  # X = C @ x
        else:
            # inverse of C: x_n = (1/N) * (X_0 / 2 + sum_{k>=1} X_k cos(pi k (2n+1) / (2N)))
            weight = torch.ones(n, 1, dtype=torch.float64)
            weight[0] = 0.5
            mat = (cos * weight).t() / n  # x = Cinv @ X, Cinv[n, k]
        mat = mat.to(device=device, dtype=dtype).contiguous()
        _CACHE[key] = mat
    return mat


def dct_matrix(n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N x N unnormalised DCT-II matrix C with ``X = C @ x`` (scipy ``dct(type=2, norm=None)``); cached."""
    return _matrix("dct", n, torch.device(device), dtype)


def idct_matrix(n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N x N exact inverse of :func:`dct_matrix` (scipy ``idct(type=2, norm=None)``); cached."""
    return _matrix("idct", n, torch.device(device), dtype)


def _apply_2d(kind: str, x: torch.Tensor) -> torch.Tensor:
    if x.ndim < 2:
        raise ValueError(f"expected a tensor with at least 2 dims (..., H, W), got shape {tuple(x.shape)}")
    dtype = _transform_dtype(x.dtype)
    h, w = x.shape[-2:]
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(dtype)
        mat_h = _matrix(kind, h, x.device, dtype)
        mat_w = _matrix(kind, w, x.device, dtype)
        return torch.matmul(torch.matmul(mat_h, x), mat_w.t())


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised 2-D DCT-II over the last two dims (== ``scipy.fft.dctn(x, type=2, axes=(-2, -1))``).

    Computed in float32 (float64 for float64 input), autocast disabled.
    """
    return _apply_2d("dct", x)


def idct2(coeffs: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`dct2` over the last two dims (== ``scipy.fft.idctn(X, type=2, axes=(-2, -1))``)."""
    return _apply_2d("idct", coeffs)


class FrequencyAttention(nn.Module):
    """CAL's ``DCTAttention``: image -> spatial attention map A in (0, 1), shape B x 1 x H x W."""

    def __init__(self, in_channels: int = 3, hidden_channels: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden_channels, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(hidden_channels, 1, kernel_size=3, padding=1)

    def mask(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Frequency mask M = sigmoid(conv2(ReLU(conv1(F)))), B x 1 x H x W."""
        return torch.sigmoid(self.conv2(self.relu(self.conv1(coeffs))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"FrequencyAttention expects B x C x H x W, got shape {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            coeffs = dct2(x)
            # the mask convs run in their parameters' dtype; the transforms stay float32 (float64)
            # channels_last: on the CPU oneDNN's 3x3 convs over 3 and 16 channels run ~2.5x faster
            # that way (forward and backward), and the mask convs are most of FFE's cost
            mask_input = coeffs.to(self.conv1.weight.dtype).contiguous(memory_format=torch.channels_last)
            mask = self.mask(mask_input).to(coeffs.dtype)
            masked = coeffs * mask
            return torch.sigmoid(idct2(masked).mean(dim=1, keepdim=True))
