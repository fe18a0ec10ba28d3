"""Conditions under which a test is skipped: the hardware it needs is missing."""

from __future__ import annotations

import pytest
import torch

_skip_without_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def requires_cuda(test):
    """Skipped without CUDA, and marked `cuda`, so that `pytest -m cuda` (bench/gpu_check.py) runs exactly these."""
    return pytest.mark.cuda(_skip_without_cuda(test))
