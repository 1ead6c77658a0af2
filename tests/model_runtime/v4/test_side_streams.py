"""Side chains of a decode step: in line without streams; on CUDA, forked after the current stream's work,
and joined (or waited for at a mark) before their results are read."""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.model.side_streams import SideStreams, side_chain, wait_for


def test_without_streams_the_chain_runs_in_line() -> None:
    assert SideStreams.on(torch.device("cpu")) is None
    x = torch.zeros(4)
    with side_chain(None) as chain:
        x += 1
        assert chain.mark() is None
    chain.join()
    wait_for(None)
    assert x.tolist() == [1, 1, 1, 1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA streams")
def test_chains_fork_after_the_current_stream_and_join_before_reads() -> None:
    """Each side stream is held up by a spin before its write, so a read that did not wait would see the
    old values: the chain sees the current stream's write before it, the second chain waits for the first's
    mark, and the current stream reads both after the joins."""
    device = torch.device("cuda")
    streams = SideStreams.on(device)
    assert streams is not None
    assert len({streams.mix.cuda_stream, streams.keys.cuda_stream, streams.index.cuda_stream}) == 3
    a = torch.zeros(1 << 20, device=device)
    a.fill_(1.0)  # on the current stream, before the fork
    with side_chain(streams.keys) as first:
        torch.cuda._sleep(50_000_000)
        b = a * 2
        b_done = first.mark()
        torch.cuda._sleep(50_000_000)
        c = b + 1
    with side_chain(streams.index) as second:
        wait_for(b_done)
        d = b * 10
    first.join()
    second.join()
    assert torch.all(c == 3).item()
    assert torch.all(d == 20).item()
