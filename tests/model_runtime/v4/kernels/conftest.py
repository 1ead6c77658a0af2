"""Kernel tests run the Triton kernels on a CUDA device, or on the CPU under Triton's interpreter.

The interpreter is chosen before Triton is first imported (it reads TRITON_INTERPRET when a kernel is
defined), so this conftest sets it when no CUDA device is present.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> torch.device:
    """Where the kernels run: the CUDA device when present, else the CPU (interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
