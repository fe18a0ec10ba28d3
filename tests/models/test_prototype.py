"""The attribution network after the backbone: CPL's patch grid and the fp32 head under autocast."""

from __future__ import annotations

import torch

from owdfa.models import AttributionModel
from owdfa.models.prototype import patch_grid


def test_cpl_patch_grid_is_the_official_overlapping_pool() -> None:
    # 8x8 map, 3x3 grid: stride 8 // 3 = 2, kernel 8 - 2 * 2 = 4 -> windows [0:4], [2:6], [4:8] per axis
    # (adaptive pooling would take [0:3], [2:6], [5:8]).
    fmap = torch.arange(64, dtype=torch.float64).view(1, 1, 8, 8)  # value = 8 * row + col
    patches = patch_grid(fmap).view(3, 3)
    starts = [0, 2, 4]
    for i, r in enumerate(starts):
        for j, c in enumerate(starts):
            rows, cols = torch.arange(r, r + 4, dtype=torch.float64), torch.arange(c, c + 4, dtype=torch.float64)
            assert patches[i, j] == 8 * rows.mean() + cols.mean()


def test_cpl_patch_grid_on_a_map_smaller_than_3x3_falls_back_to_adaptive_pooling() -> None:
    # The official pool has stride 2 // 3 = 0 there and cannot run; adaptive pooling of a 2x2 map to 3x3
    # takes windows [0:1], [0:2], [1:2].
    fmap = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    assert patch_grid(fmap).view(3, 3).tolist() == [[1.0, 1.5, 2.0], [2.0, 2.5, 3.0], [3.0, 3.5, 4.0]]


def test_head_is_fp32_under_bf16_autocast() -> None:
    # Only the backbone may run in bf16: FFE product, pooling, BNNeck, prototype logits are fp32.
    torch.manual_seed(0)
    model = AttributionModel("test_resnet", 5, ffe=True, patch_features=True).eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        fmap = model.backbone.forward_features(model.normalise(images))
        out = model(images)
    assert fmap.dtype == torch.bfloat16  # the autocast is really on for the backbone
    for key in ("features", "logits", "patch_features"):
        assert out[key].dtype == torch.float32, key
