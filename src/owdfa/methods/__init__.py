"""Methods: one loss object per method over the one shared training loop."""

from owdfa.methods.base import METHODS, Method, StepInput, build_method

__all__ = ["METHODS", "Method", "StepInput", "build_method"]
