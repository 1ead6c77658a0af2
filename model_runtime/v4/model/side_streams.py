"""Side streams of a device decode step: chains of kernels that need not wait for each other run side by side.

A decode step at batch 1 is a chain of small kernels, most of them too short to fill the GPU. Where a
layer's work splits into chains with no data between them, each runs on its own stream (`SideStreams`):
the layers' mHC mappings (`mhc.py`), the token's keys (its window-ring row and the compressors' step),
and the indexer's queries and top-k (`decode_step.decode_attention`), beside the query projection on the
current stream; the MoE's routing (`moe.py`) beside its shared expert. Captured in a CUDA graph, the forks
and joins become the graph's edges, so the chains' kernels overlap on the device.

`side_chain` is the fork and the join: its body is queued on the side stream after everything queued so
far on the current stream, and `SideChain.join` makes the current stream wait for the body's end
(`SideChain.mark` names a point inside it, for another chain to wait for with `wait_for`). Without a
side stream (on CPU, or a step given none) the body runs in line and the rest do nothing.

Memory: every chain starts after all the work queued on the current stream and is joined before the
layer returns. A block the caching allocator hands out on a side stream goes back to that stream's pool
and is reused only by that stream's later work, which the next fork queues after the join; the current
stream's tensors a chain reads stay referenced until the join. So no block is reused while another
stream may still read or write it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SideStreams:
    """The streams of a decode step's side chains (see the module docstring), all of high priority, so that
    none is the pool stream a graph capture runs on."""

    mix: torch.cuda.Stream
    keys: torch.cuda.Stream
    index: torch.cuda.Stream
    route: torch.cuda.Stream

    @classmethod
    def on(cls, device: torch.device) -> SideStreams | None:
        """Fresh side streams on a CUDA `device`; None elsewhere (the chains run in line)."""
        if device.type != "cuda":
            return None
        return cls(*(torch.cuda.Stream(device, priority=-1) for _ in range(4)))


class SideChain:
    """Work queued on `stream` by a `side_chain` block; in line when `stream` is None."""

    def __init__(self, stream: torch.cuda.Stream | None) -> None:
        self.stream = stream
        self._end: torch.cuda.Event | None = None

    def mark(self) -> torch.cuda.Event | None:
        """An event at the chain's work queued so far (inside its block), or None in line."""
        if self.stream is None:
            return None
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

    def join(self) -> None:
        """The current stream waits for all of the chain's work (after its block)."""
        if self.stream is not None:
            assert self._end is not None, "join a side chain after its block"
            torch.cuda.current_stream(self.stream.device).wait_event(self._end)


def wait_for(event: torch.cuda.Event | None) -> None:
    """The current stream waits for `event` (a `SideChain.mark`); nothing for None."""
    if event is not None:
        event.wait()


@contextmanager
def side_chain(stream: torch.cuda.Stream | None) -> Iterator[SideChain]:
    """Queue the block's work on `stream` after the current stream's (in line when None); join it with
    the yielded chain's `join`."""
    chain = SideChain(stream)
    if stream is None:
        yield chain
        return
    stream.wait_stream(torch.cuda.current_stream(stream.device))
    with torch.cuda.stream(stream):
        yield chain
    chain._end = chain.mark()
