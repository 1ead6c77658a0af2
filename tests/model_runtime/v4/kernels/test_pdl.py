"""Which launches take programmatic dependent launch: CUDA devices of compute capability 9 or later, never
the CPU interpreter. (Every GPU test of the kernels runs them with it on an H200.)"""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.kernels.pdl import pdl_launch


def test_cpu_launches_without_pdl() -> None:
    assert pdl_launch(torch.device("cpu")) == {"PDL": False}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hopper_launches_with_pdl() -> None:
    device = torch.device("cuda")
    hopper = torch.cuda.get_device_capability(device)[0] >= 9
    want = {"PDL": True, "launch_pdl": True} if hopper else {"PDL": False}
    assert pdl_launch(device) == want
