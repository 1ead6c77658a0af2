"""Broken checkpoints fail with errors that name the file or tensor, both shapes, and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from deepscout.model_runtime.v4.model_config import ModelConfigError
from deepscout.model_runtime.v4.weights.checkpoint_errors import (
    CheckpointError,
    CheckpointNotFoundError,
    MissingShardError,
    MissingTensorsError,
    TensorDtypeError,
    TensorShapeError,
    UnexpectedTensorsError,
)
from deepscout.model_runtime.v4.weights.loader import load_model
from deepscout.model_runtime.v4.weights.safetensors_stream import INDEX_FILE, ShardedSafetensors
from deepscout.model_runtime.v4.weights.synthetic import make_synthetic_checkpoint


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("v4_pristine")
    make_synthetic_checkpoint(directory, seed=1, max_shard_bytes=2 << 20)
    return directory


@pytest.fixture
def ckpt(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "ckpt"))


def _index(directory: Path) -> dict[str, str]:
    return json.loads((directory / INDEX_FILE).read_text())["weight_map"]


def _rewrite(directory: Path, name: str, value: torch.Tensor | None) -> None:
    """Replace (or with None, delete) one stored tensor, keeping the index consistent."""
    index = json.loads((directory / INDEX_FILE).read_text())
    shard = index["weight_map"][name]
    tensors = load_file(str(directory / shard))
    if value is None:
        del tensors[name]
        del index["weight_map"][name]
    else:
        tensors[name] = value
    save_file(tensors, str(directory / shard), metadata={"format": "pt"})
    (directory / INDEX_FILE).write_text(json.dumps(index))


def _edit_config(directory: Path, **changes: object) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def test_a_missing_shard_is_named(ckpt: Path) -> None:
    last = sorted(set(_index(ckpt).values()))[-1]
    (ckpt / last).unlink()
    with pytest.raises(MissingShardError, match=rf"missing shard '{last}'.*re-download") as err:
        load_model(ckpt)
    assert err.value.shard == last and isinstance(err.value, FileNotFoundError)


def test_an_index_pointing_at_the_wrong_shard_is_reported(ckpt: Path) -> None:
    index = json.loads((ckpt / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    index["weight_map"]["embed.weight"] = next(s for s in shards if s != index["weight_map"]["embed.weight"])
    (ckpt / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"'embed.weight' in shard .* does not hold it"):
        ShardedSafetensors(ckpt)


def test_a_float_hash_table_is_a_dtype_error(ckpt: Path) -> None:
    _rewrite(ckpt, "layers.0.ffn.gate.tid2eid", torch.zeros(512, 2))
    with pytest.raises(
        TensorDtypeError, match=r"'layers.0.ffn.gate.tid2eid' is stored as float32.*int32"
    ) as err:
        load_model(ckpt)
    assert err.value.name == "layers.0.ffn.gate.tid2eid"


def test_an_integer_norm_is_a_dtype_error(ckpt: Path) -> None:
    _rewrite(ckpt, "layers.1.attn_norm.weight", torch.ones(256, dtype=torch.int32))
    with pytest.raises(TensorDtypeError, match=r"'layers.1.attn_norm.weight' is stored as int32"):
        load_model(ckpt)


def test_an_fp8_weight_without_its_scale_is_a_dtype_error(ckpt: Path) -> None:
    _rewrite(ckpt, "layers.0.attn.wq_a.scale", None)
    with pytest.raises(TensorDtypeError, match=r"'layers.0.attn.wq_a.weight'.*needs its block scale"):
        load_model(ckpt)


def test_a_scale_beside_an_unquantised_weight_is_a_dtype_error(ckpt: Path) -> None:
    _rewrite(ckpt, "layers.0.attn.wq_a.weight", torch.zeros(128, 256, dtype=torch.bfloat16))
    with pytest.raises(TensorDtypeError, match=r"stored as bfloat16.*has a block scale"):
        load_model(ckpt)


def test_a_scale_in_an_unknown_dtype_is_a_dtype_error(ckpt: Path) -> None:
    _rewrite(ckpt, "layers.0.attn.wq_a.scale", torch.ones(1, 2, dtype=torch.int32))
    with pytest.raises(TensorDtypeError, match=r"'layers.0.attn.wq_a.scale' is stored as int32"):
        load_model(ckpt)


def test_a_scale_grid_of_the_wrong_shape_names_both_shapes(ckpt: Path) -> None:
    _rewrite(ckpt, "layers.1.ffn.experts.2.w1.scale", torch.ones(128, 4, dtype=torch.float32))
    with pytest.raises(
        TensorShapeError, match=r"'layers.1.ffn.experts.2.w1.scale' has shape \[128, 4\]"
    ) as err:
        load_model(ckpt)
    assert err.value.model_shape == (128, 8)


def test_a_config_that_does_not_match_the_tensors_names_the_tensor_and_both_shapes(ckpt: Path) -> None:
    _edit_config(ckpt, q_lora_rank=256)
    with pytest.raises(TensorShapeError) as err:
        load_model(ckpt)
    message = str(err.value)
    assert err.value.name == "layers.0.attn.wq_a.weight"
    assert "[128, 256] in the checkpoint" in message and "config.json implies [256, 256]" in message


def test_checks_run_before_any_tensor_data_is_read(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _edit_config(ckpt, moe_intermediate_size=256)

    def no_reads(self: ShardedSafetensors, name: str) -> torch.Tensor:
        raise AssertionError(f"read {name} before validation finished")

    monkeypatch.setattr(ShardedSafetensors, "read", no_reads)
    with pytest.raises(TensorShapeError, match="experts"):
        load_model(ckpt)


def test_missing_tensors_are_listed(ckpt: Path) -> None:
    _rewrite(ckpt, "layers.2.attn.compressor.ape", None)
    with pytest.raises(MissingTensorsError, match=r"'layers.2.attn.compressor.ape'.*incomplete") as err:
        load_model(ckpt)
    assert err.value.names == ["layers.2.attn.compressor.ape"]


def test_a_config_with_more_layers_reports_the_missing_ones(ckpt: Path) -> None:
    _edit_config(ckpt, num_hidden_layers=4, compress_ratios=[0, 4, 128, 4, 0])
    with pytest.raises(MissingTensorsError, match=r"layers\.3\.") as err:
        load_model(ckpt)
    assert all(name.startswith("layers.3.") for name in err.value.names)


def test_a_config_with_fewer_experts_reports_the_unexpected_tensors(ckpt: Path) -> None:
    _edit_config(ckpt, n_routed_experts=4)
    with pytest.raises(
        UnexpectedTensorsError, match=r"no place in the model.*fewer layers or experts"
    ) as err:
        load_model(ckpt)
    assert "layers.0.ffn.experts.7.w1.weight" in err.value.names


def test_missing_directory_config_or_shards(tmp_path: Path, pristine: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(CheckpointNotFoundError, match=r"no config\.json"):
        load_model(tmp_path)
    shutil.copy(pristine / "config.json", tmp_path / "config.json")
    with pytest.raises(
        CheckpointNotFoundError, match=r"no model.safetensors.index.json and no \*.safetensors"
    ):
        load_model(tmp_path)


def test_an_invalid_config_is_a_config_error(ckpt: Path) -> None:
    _edit_config(ckpt, compress_ratios=[0, 4, 64, 0])
    with pytest.raises(ModelConfigError, match="unknown ratio 64"):
        load_model(ckpt)


def test_a_checkpoint_without_an_index_is_read_from_its_shards(ckpt: Path) -> None:
    (ckpt / INDEX_FILE).unlink()
    model, report = load_model(ckpt)
    assert report.tensors == len(model.state_dict())


def _add_tensor(directory: Path, name: str, value: torch.Tensor) -> None:
    index = json.loads((directory / INDEX_FILE).read_text())
    shard = index["weight_map"]["embed.weight"]
    tensors = load_file(str(directory / shard))
    tensors[name] = value
    save_file(tensors, str(directory / shard), metadata={"format": "pt"})
    index["weight_map"][name] = shard
    (directory / INDEX_FILE).write_text(json.dumps(index))


def test_mtp_aliases_of_the_shared_embedding_and_head_are_accepted(ckpt: Path) -> None:
    embed = load_file(str(ckpt / _index(ckpt)["embed.weight"]))["embed.weight"]
    _add_tensor(ckpt, "mtp.0.embed.weight", embed)
    _add_tensor(ckpt, "mtp.0.head.weight", torch.zeros(512, 256, dtype=torch.bfloat16))
    model, report = load_model(ckpt)
    assert report.tensors == len(model.state_dict()) and "mtp.0.embed.weight" not in model.state_dict()


def test_an_mtp_alias_of_the_wrong_shape_is_a_shape_error(ckpt: Path) -> None:
    _add_tensor(ckpt, "mtp.0.head.weight", torch.zeros(256, 256, dtype=torch.bfloat16))
    with pytest.raises(TensorShapeError, match=r"'mtp.0.head.weight' has shape \[256, 256\]"):
        load_model(ckpt)
