"""The attribution network shared by every method.

timm backbone (by name) -> feature map -> [optional FFE reweighting] -> global pooling -> BNNeck
(BatchNorm1d with a frozen zero bias, as in CAL and CPL) -> dropout -> an unnormalised
dot-product prototype classifier whose rows are the class prototypes (init N(0, 0.001^2), no
bias, no feature or prototype normalisation).

Options a method may ask for:
* `ffe`: CAL's frequency-guided feature enhancement (a DCT attention map of the input, pooled
  to 8x8 and resized to the feature map, that reweights the final feature map, `owdfa.models.ffe`);
* `patch_features`: CPL's local features, the feature map pooled to a 3x3 grid by the official
  overlapping pool, each patch through its own bias-frozen BatchNorm1d.

Only the backbone runs under bf16 autocast; everything after its feature map is fp32.

`num_active` is a buffer, not a plain attribute, so a pruned prototype count (DPP) is saved with
the weights and an offline evaluation sees the classifier that training saw.
"""

from __future__ import annotations

from typing import ClassVar

import timm
import torch
import torch.nn.functional as F
from torch import nn

from owdfa.core.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH_GRID = 3  # CPL: local features on a 3x3 grid
FFE_GRID = 8  # CAL: the attention map is pooled to 8x8 before it meets the feature map


def _frozen_bias_bn(dim: int) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(dim)
    bn.bias.requires_grad_(False)
    return bn


def grid_pool(maps: torch.Tensor, cells: int) -> torch.Tensor:
    """Average-pool B x C x H x W to a cells x cells grid the way CAL's and CPL's custom pool does.

    Per axis: stride = size // cells and kernel = size - (cells - 1) * stride, a plain average
    over each window; windows overlap when the size is not a multiple of `cells` (an 8x8 map to
    3x3: rows [0:4], [2:6], [4:8]). This is not adaptive pooling ([0:3], [2:6], [5:8] there).
    """
    h, w = maps.shape[-2:]
    if h < cells or w < cells:
        raise ValueError(f"cannot pool a {h}x{w} map to {cells}x{cells}: the official pool needs >= {cells} per axis")
    stride = (h // cells, w // cells)
    kernel = (h - (cells - 1) * stride[0], w - (cells - 1) * stride[1])
    return F.avg_pool2d(maps, kernel_size=kernel, stride=stride)


def ffe_weights(attention: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """CAL's FFE map at the feature map's size: the grid pool to 8x8 first, then bilinear
    (align_corners=False) to `size` when that is not 8x8 (spec section 10.8), at every input size."""
    h, w = attention.shape[-2:]
    if h < FFE_GRID or w < FFE_GRID:
        raise ConfigError("align.image_size", f"FFE needs images of at least {FFE_GRID} px, got {h}x{w}")
    pooled = grid_pool(attention, FFE_GRID)
    if tuple(size) == (FFE_GRID, FFE_GRID):
        return pooled
    return F.interpolate(pooled, size=tuple(size), mode="bilinear", align_corners=False)


def patch_grid(fmap: torch.Tensor) -> torch.Tensor:
    """CPL's 3x3 local patches (B x D x 9): the official grid pool; adaptive pooling on a map
    smaller than 3x3, where the official pool has stride 0 and cannot run (a 64 px toy backbone)."""
    if min(fmap.shape[-2:]) < PATCH_GRID:
        return F.adaptive_avg_pool2d(fmap, PATCH_GRID).flatten(2)
    return grid_pool(fmap, PATCH_GRID).flatten(2)


class AttributionModel(nn.Module):
    def __init__(
        self,
        backbone: str,
        num_prototypes: int,
        *,
        pretrained: bool = False,
        dropout: float = 0.2,
        ffe: bool = False,
        patch_features: bool = False,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.backbone = timm.create_model(backbone, pretrained=pretrained, num_classes=0, global_pool="avg")
        dim = int(self.backbone.num_features)
        self.neck = _frozen_bias_bn(dim)
        self.dropout = nn.Dropout(dropout)
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, dim) * 1e-3)
        self.register_buffer("num_active", torch.tensor(num_prototypes, dtype=torch.long))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.ffe: nn.Module | None = None
        if ffe:
            from owdfa.models.ffe import FrequencyAttention

            self.ffe = FrequencyAttention()
        self.patch_necks: nn.ModuleList | None = None
        if patch_features:
            self.patch_necks = nn.ModuleList(_frozen_bias_bn(dim) for _ in range(PATCH_GRID * PATCH_GRID))

    @property
    def feature_dim(self) -> int:
        return int(self.prototypes.shape[1])

    @property
    def options(self) -> dict[str, bool]:
        return {"ffe": self.ffe is not None, "patch_features": self.patch_necks is not None}

    # each architectural option (`options`, a card's `model_options`) -> the prefix of its tensors
    OPTION_TENSORS: ClassVar[dict[str, str]] = {"ffe": "ffe.", "patch_features": "patch_necks."}

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0,1] float NCHW -> ImageNet-normalised float."""
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return (images - self.mean) / self.std

    def forward_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone (under the caller's autocast), then everything after the feature map in fp32.

        Under bf16 autocast, logits between 16 and 32 would move in steps of 0.125 (1.25 after CCR's
        teacher temperature 0.1) and argmax ties would go to the lowest, known, index; so the FFE
        product, pooling, BNNeck and patch features run with autocast off on a float32 map.
        """
        x = self.normalise(images)
        fmap = self.backbone.forward_features(x)
        out: dict[str, torch.Tensor] = {}
        if (self.ffe is not None or self.patch_necks is not None) and fmap.ndim != 4:
            raise ConfigError(
                "train.backbone",
                f"{self.backbone_name} has no spatial feature map; FFE and CPL's "
                "patch features need a convolutional backbone",
            )
        with torch.autocast(device_type=fmap.device.type, enabled=False):
            fmap = fmap.float()
            if self.ffe is not None:
                attention = self.ffe(x)
                fmap = fmap * ffe_weights(attention, fmap.shape[-2:]).float()
                out["attention"] = attention
            pooled = self.backbone.forward_head(fmap, pre_logits=True)
            out["features"] = self.neck(pooled)
            if self.patch_necks is not None:
                patches = patch_grid(fmap)  # B x D x 9
                out["patch_features"] = torch.stack(
                    [neck(patches[:, :, k]) for k, neck in enumerate(self.patch_necks)], dim=1
                )  # B x 9 x D
        return out

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(images)["features"]

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """fp32 logits over the active prototypes, also under autocast (see `forward_maps`)."""
        active = int(self.num_active)
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.dropout(features.float()) @ self.prototypes[:active].float().t()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.forward_maps(images)
        out["logits"] = self.classify(out["features"])
        return out
