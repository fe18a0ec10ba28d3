"""The attribution network shared by every method.

timm backbone (by name) -> feature map -> [optional FFE reweighting] -> global pooling -> BNNeck
(BatchNorm1d with a frozen zero bias, as in CAL and CPL) -> dropout -> an unnormalised
dot-product prototype classifier whose rows are the class prototypes (init N(0, 0.001^2), no
bias, no feature or prototype normalisation).

Options a method may ask for:
* `ffe`: CAL's frequency-guided feature enhancement (a DCT attention map of the input that
  reweights the final feature map, `owdfa.models.ffe`);
* `patch_features`: CPL's local features, the feature map pooled to a 3x3 grid, each patch
  through its own bias-frozen BatchNorm1d.

`num_active` is a buffer, not a plain attribute, so a pruned prototype count (DPP) is saved with
the weights and an offline evaluation sees the classifier that training saw.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from owdfa.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH_GRID = 3


def _frozen_bias_bn(dim: int) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(dim)
    bn.bias.requires_grad_(False)
    return bn


def pool_to(attention: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Average-pool an input-resolution map to the feature-map size (bilinear when it cannot tile)."""
    h, w = attention.shape[-2:]
    if h % size[0] == 0 and w % size[1] == 0:
        return F.adaptive_avg_pool2d(attention, size)
    return F.interpolate(attention, size=size, mode="bilinear", align_corners=False)


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

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0,1] float NCHW -> ImageNet-normalised float."""
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return (images - self.mean) / self.std

    def forward_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.normalise(images)
        fmap = self.backbone.forward_features(x)
        out: dict[str, torch.Tensor] = {}
        if (self.ffe is not None or self.patch_necks is not None) and fmap.ndim != 4:
            raise ConfigError(
                "train.backbone",
                f"{self.backbone_name} has no spatial feature map; FFE and CPL's "
                "patch features need a convolutional backbone",
            )
        if self.ffe is not None:
            attention = self.ffe(x)
            fmap = fmap * pool_to(attention, fmap.shape[-2:]).to(fmap.dtype)
            out["attention"] = attention
        pooled = self.backbone.forward_head(fmap, pre_logits=True)
        out["features"] = self.neck(pooled)
        if self.patch_necks is not None:
            patches = F.adaptive_avg_pool2d(fmap, PATCH_GRID).flatten(2)  # B x D x 9
            out["patch_features"] = torch.stack(
                [neck(patches[:, :, k]) for k, neck in enumerate(self.patch_necks)], dim=1
            )  # B x 9 x D
        return out

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(images)["features"]

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        active = int(self.num_active)
        return self.dropout(features) @ self.prototypes[:active].t()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.forward_maps(images)
        out["logits"] = self.classify(out["features"])
        return out
