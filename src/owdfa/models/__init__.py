"""Models: a timm backbone, a BNNeck and an unnormalised prototype classifier."""

from owdfa.models.prototype import AttributionModel

__all__ = ["AttributionModel"]
