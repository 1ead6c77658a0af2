"""Programmatic dependent launch (PDL) for every Triton kernel of the V4 runtime.

A decode step is a chain of ~1,500 small kernels, most of them a few microseconds long; between two
kernels of a stream the GPU drains the first before it launches the second. With PDL (Hopper and later)
a kernel launched with `launch_pdl` may be scheduled while the kernel before it is still running; so every
kernel starts with `enter_pdl`, which waits until the kernel before it has completed and its writes are
visible (`griddepcontrol.wait`: nothing is read or written before it), then lets the kernel after it be
scheduled (`griddepcontrol.launch_dependents`). Ordering stays what the stream gives: a kernel runs its
body only after its predecessor has completed, which ran its body only after its own predecessor had, so
every earlier kernel has completed too; kernels of other libraries (cuBLAS, NCCL) are launched without the
attribute and wait as usual. What PDL saves is the launch and ramp-up of each kernel, about 0.3 µs a
kernel in a captured chain (`benchmarks/v4_speed_notes.md`); CUDA graphs keep the dependency as captured.

`pdl_launch(device)` gives the launch options: the kernels' `PDL` constexpr and Triton's `launch_pdl` on a
CUDA device of compute capability 9 or later outside Triton's interpreter, `PDL=False` elsewhere (the
interpreter runs no PTX, and the instructions need sm_90).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@triton.jit
def enter_pdl(PDL: tl.constexpr):
    """A kernel's first statement: with PDL, wait for the kernel before it, then release the one after."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


def pdl_launch(device: torch.device) -> dict[str, bool]:
    """The launch options for a kernel on `device` (see the module docstring)."""
    if device.type != "cuda" or triton.knobs.runtime.interpret:
        return {"PDL": False}
    if torch.cuda.get_device_capability(device)[0] < 9:
        return {"PDL": False}
    return {"PDL": True, "launch_pdl": True}
