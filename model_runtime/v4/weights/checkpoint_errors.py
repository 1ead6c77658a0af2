"""Errors raised while reading a DeepSeek-V4 checkpoint; each message names the tensor or file and the fix."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from deepscout.errors import DeepscoutError


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float8_e4m3fn`` → ``float8_e4m3fn``, for messages."""
    return str(dtype).removeprefix("torch.")


class CheckpointError(DeepscoutError, ValueError):
    """A checkpoint directory cannot be loaded as it is."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The directory, its config.json, or its safetensors files are absent."""


class MissingShardError(CheckpointError, FileNotFoundError):
    """The index names a shard file that is not in the directory."""

    def __init__(self, shard: str, directory: Path, tensors: Sequence[str]) -> None:
        self.shard = shard
        example = f" (holds {len(tensors)} tensors, e.g. {tensors[0]!r})" if tensors else ""
        super().__init__(
            f"missing shard {shard!r} in {directory}{example}; "
            "the download is incomplete: fetch that file again or re-download the checkpoint"
        )


class TensorDtypeError(CheckpointError):
    """A tensor is stored in a dtype the runtime cannot read for that tensor."""

    def __init__(self, name: str, found: str, expected: Iterable[str], why: str = "") -> None:
        self.name = name
        self.found = found
        choices = ", ".join(sorted(expected))
        reason = f" ({why})" if why else ""
        super().__init__(
            f"tensor {name!r} is stored as {found}, expected one of: {choices}{reason}; "
            "the checkpoint is not in the official DeepSeek-V4 format"
        )


class TensorShapeError(CheckpointError):
    """A tensor's shape does not match what config.json implies for it."""

    def __init__(self, name: str, checkpoint_shape: Sequence[int], model_shape: Sequence[int]) -> None:
        self.name = name
        self.checkpoint_shape = tuple(checkpoint_shape)
        self.model_shape = tuple(model_shape)
        super().__init__(
            f"tensor {name!r} has shape {list(checkpoint_shape)} in the checkpoint but config.json implies "
            f"{list(model_shape)}; config.json does not describe these weights (wrong config.json, or a "
            "different model size)"
        )


def _listing(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{shown}{more}"


class _TensorListError(CheckpointError):
    """Some tensors (kept in `names`) do not fit: the message gives the problem, the names, then the fix."""

    def __init__(self, names: Sequence[str], problem: str, fix: str) -> None:
        self.names = list(names)
        super().__init__(f"{len(names)} tensor(s) {problem}: {_listing(self.names)}; {fix}")


class MissingTensorsError(_TensorListError):
    """Tensors the model needs are absent from the checkpoint."""

    def __init__(self, names: Sequence[str]) -> None:
        larger = "the checkpoint is incomplete or config.json describes a larger model (e.g. more layers)"
        super().__init__(names, "the model needs are not in the checkpoint", larger)


class UnexpectedTensorsError(_TensorListError):
    """The checkpoint holds tensors the model has no place for."""

    def __init__(self, names: Sequence[str]) -> None:
        smaller = "config.json describes a smaller model than these weights (e.g. fewer layers or experts)"
        super().__init__(names, "in the checkpoint have no place in the model", smaller)


class UnsupportedCheckpointError(CheckpointError):
    """config.json describes a model this runtime does not run (another architecture or DeepSeek variant)."""
