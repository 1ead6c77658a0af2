"""The shard reader: headers only until a tensor is asked for, zero-copy views, every stored dtype, and FP4
experts stored in any of their three dtypes loading to the same weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.weights.checkpoint import Checkpoint
from deepscout.model_runtime.v4.weights.loader import load_model
from deepscout.model_runtime.v4.weights.safetensors_stream import INDEX_FILE, ShardedSafetensors
from deepscout.model_runtime.v4.weights.synthetic import flash_shaped_small, make_synthetic_checkpoint


def test_headers_describe_every_dtype_and_reads_return_the_stored_values(tmp_path: Path) -> None:
    tensors = {
        "a.bf16": torch.randn(3, 5).to(torch.bfloat16),
        "b.fp8": torch.randn(4, 4).to(torch.float8_e4m3fn),
        "c.e8m0": torch.tensor([[120, 127]], dtype=torch.uint8).view(torch.float8_e8m0fnu),
        "d.fp4": torch.randint(0, 255, (2, 6), dtype=torch.uint8).view(torch.float4_e2m1fn_x2),
        "e.i32": torch.arange(6, dtype=torch.int32).view(2, 3),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    reader = ShardedSafetensors(tmp_path, release_after_bytes=0)
    for name, value in tensors.items():
        info = reader.info(name)
        assert info.dtype == value.dtype and info.shape == tuple(value.shape), name
        assert info.shard == "model.safetensors" and info.nbytes == value.numel() * value.element_size()
        read = reader.read(name)
        assert read.dtype == value.dtype and torch.equal(read.view(torch.uint8), value.view(torch.uint8))
    with pytest.raises(KeyError, match="'missing' is not in the checkpoint"):
        reader.info("missing")


def test_a_tensor_stored_twice_across_shards_is_rejected(tmp_path: Path) -> None:
    save_file({"x": torch.zeros(2)}, str(tmp_path / "a.safetensors"))
    save_file({"x": torch.ones(2)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(ValueError, match=r"'x' is in both a\.safetensors and b\.safetensors"):
        ShardedSafetensors(tmp_path)


def test_a_corrupt_shard_is_reported(tmp_path: Path) -> None:
    (tmp_path / "model-00001-of-00001.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / INDEX_FILE).write_text(json.dumps({"weight_map": {"x": "model-00001-of-00001.safetensors"}}))
    with pytest.raises(ValueError, match="is not safetensors"):
        ShardedSafetensors(tmp_path)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DeepseekV4Model]:
    directory = tmp_path_factory.mktemp("v4_stream")
    args = flash_shaped_small(n_routed_experts=2, vocab_size=256, num_hash_layers=0)
    return directory, make_synthetic_checkpoint(directory, args, seed=11, max_shard_bytes=1 << 20)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float4_e2m1fn_x2])
def test_fp4_experts_in_any_storage_dtype_load_to_the_same_weights(
    small: tuple[Path, DeepseekV4Model], tmp_path: Path, dtype: torch.dtype
) -> None:
    directory = Path(shutil.copytree(small[0], tmp_path / "ckpt"))
    for shard in directory.glob("*.safetensors"):
        tensors = load_file(str(shard))
        for name, value in tensors.items():
            if ".experts." in name and name.endswith(".weight"):
                tensors[name] = value.view(dtype)
        save_file(tensors, str(shard), metadata={"format": "pt"})
    checkpoint = Checkpoint(directory)
    assert checkpoint.weights["layers.0.ffn.experts.1.w2.weight"].data.dtype == dtype
    assert checkpoint.weights["layers.0.ffn.experts.1.w2.weight"].format == "mxfp4"
    checkpoint.close()
    loaded, _ = load_model(directory)
    expected = small[1].state_dict()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, expected[name]), name
