"""The device's multiprocessor count, which the decode kernels size their grids by."""

from __future__ import annotations

import torch


def multiprocessors(device: torch.device) -> int:
    """The device's multiprocessors (off CUDA one: the interpreter gains nothing from many programs)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
