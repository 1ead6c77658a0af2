"""The typed switch between a kernel's naive reference path and its Triton path.

"triton" runs the fused kernels: on CUDA tensors, or on CPU tensors under Triton's interpreter (the CPU tests
set TRITON_INTERPRET=1 before Triton is first imported). "reference" runs plain PyTorch, the oracle.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch

KernelImpl = Literal["reference", "triton"]


def default_impl(device: torch.device) -> KernelImpl:
    """ "triton" on a CUDA device where Triton is installed, else "reference"."""
    if device.type == "cuda" and importlib.util.find_spec("triton") is not None:
        return "triton"
    return "reference"
