"""Methods: one loss object per method over the one shared training loop."""

from owdfa.methods.base import Method, StepInput
from owdfa.methods.registry import build_method

__all__ = ["Method", "StepInput", "build_method"]
