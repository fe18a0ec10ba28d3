"""The attribution network shared by every method.

timm backbone (by name, global average pooled) -> BNNeck (BatchNorm1d with a frozen zero bias,
as in CAL and CPL) -> dropout -> an unnormalised dot-product prototype classifier whose rows are
the class prototypes (init N(0, 0.001^2), no bias, no feature or prototype normalisation).
`num_active` is a buffer, not a plain attribute, so a pruned prototype count is saved with the
weights and an offline evaluation sees the same classifier that training saw.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class AttributionModel(nn.Module):
    def __init__(self, backbone: str, num_prototypes: int, *, pretrained: bool = False, dropout: float = 0.2) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.backbone = timm.create_model(backbone, pretrained=pretrained, num_classes=0, global_pool="avg")
        dim = int(self.backbone.num_features)
        self.neck = nn.BatchNorm1d(dim)
        self.neck.bias.requires_grad_(False)
        self.dropout = nn.Dropout(dropout)
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, dim) * 1e-3)
        self.register_buffer("num_active", torch.tensor(num_prototypes, dtype=torch.long))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def feature_dim(self) -> int:
        return int(self.prototypes.shape[1])

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0,1] float NCHW -> ImageNet-normalised float."""
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return (images - self.mean) / self.std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(self.normalise(images)))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        active = int(self.num_active)
        return self.dropout(features) @ self.prototypes[:active].t()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(images)
        return {"features": features, "logits": self.classify(features)}


def build_model(
    backbone: str, num_prototypes: int, *, pretrained: bool = False, dropout: float = 0.2
) -> AttributionModel:
    return AttributionModel(backbone, num_prototypes, pretrained=pretrained, dropout=dropout)
