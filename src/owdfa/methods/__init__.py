"""Methods: one loss object per method over the one shared training loop.

Every method module is imported here, so importing anything of `owdfa.methods` registers them all
(`owdfa.methods.registry`): a new method is one decorated class plus one import line below.
"""

from owdfa.methods import cal, cpl  # noqa: F401 - imported for their @register_method
from owdfa.methods.base import Method, StepInput
from owdfa.methods.registry import build_method, list_methods, method_from_variant, resolve_variant

__all__ = ["Method", "StepInput", "build_method", "list_methods", "method_from_variant", "resolve_variant"]
