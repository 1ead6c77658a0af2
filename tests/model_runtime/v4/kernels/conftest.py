"""Kernel tests run the Triton kernels on a CUDA device, or on the CPU under Triton's interpreter (which
the suite's root conftest selects before any kernel module is imported)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def device() -> torch.device:
    """Where the kernels run: the CUDA device when present, else the CPU (interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
