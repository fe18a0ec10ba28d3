"""Models: a timm backbone, a BNNeck and an unnormalised prototype classifier."""

from owdfa.models.prototype import AttributionModel, build_model

__all__ = ["AttributionModel", "build_model"]
