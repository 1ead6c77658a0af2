"""DeepSeek-V4-Flash-0731 checkpoints load as V4's backbone: the DSpark drafter under ``mtp.*`` is recognised,
shape-checked and skipped with one log line, never loaded into MTP layers; V4's own MTP layers still load."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import LayerKind, ModelArgs
from deepscout.model_runtime.v4.weights.checkpoint import Checkpoint
from deepscout.model_runtime.v4.weights.checkpoint_errors import (
    CheckpointError,
    TensorShapeError,
    UnexpectedTensorsError,
    UnsupportedCheckpointError,
)
from deepscout.model_runtime.v4.weights.checkpoint_variant import CheckpointVariant
from deepscout.model_runtime.v4.weights.loader import allocate_model, load_model, load_weights
from deepscout.model_runtime.v4.weights.safetensors_stream import INDEX_FILE, ShardedSafetensors
from deepscout.model_runtime.v4.weights.synthetic import (
    flash_shaped_small,
    make_synthetic_checkpoint,
    synthetic_drafter,
)

ARGS = flash_shaped_small((LayerKind.SLIDING, LayerKind.CSA), n_routed_experts=4)
BACKBONE = ARGS.with_(num_nextn_predict_layers=0, mtp_layer_types=())
LOG_LINE = (
    r"^DeepSeek-V4-Flash-0731: DSpark drafter \(3 of 3 stages, (\d+) tensors, \d+\.\d\d GiB\) found and "
    r"skipped; speculative decoding with it is not supported yet$"
)


@pytest.fixture(scope="module")
def dspark(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DeepseekV4Model]:
    directory = tmp_path_factory.mktemp("v4_0731")
    return directory, make_synthetic_checkpoint(directory, ARGS, seed=4, dspark=True)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same backbone (same seed) written as plain V4 without MTP."""
    directory = tmp_path_factory.mktemp("v4_backbone")
    make_synthetic_checkpoint(directory, BACKBONE, seed=4)
    return directory


@pytest.fixture
def ckpt(dspark: tuple[Path, DeepseekV4Model], tmp_path: Path) -> Path:
    return Path(shutil.copytree(dspark[0], tmp_path / "ckpt"))


def _put(directory: Path, name: str, value: torch.Tensor) -> None:
    """Add or replace one stored tensor (in embed.weight's shard), keeping the index consistent."""
    index = json.loads((directory / INDEX_FILE).read_text())
    shard = index["weight_map"].get(name, index["weight_map"]["embed.weight"])
    tensors = load_file(str(directory / shard))
    tensors[name] = value
    save_file(tensors, str(directory / shard), metadata={"format": "pt"})
    index["weight_map"][name] = shard
    (directory / INDEX_FILE).write_text(json.dumps(index))


def test_the_checkpoint_is_0731_shaped(dspark: tuple[Path, DeepseekV4Model]) -> None:
    directory, _ = dspark
    config = json.loads((directory / "config.json").read_text())
    assert config["dspark_num_stages"] == 3 and config["num_nextn_predict_layers"] == 3
    assert config["compress_ratios"] == [0, 4, 0, 0, 0]
    weights = Checkpoint(directory).weights
    drafter = [name for name in weights if name.startswith("mtp.")]
    assert {name.split(".")[1] for name in drafter} == {"0", "1", "2"}
    assert "mtp.2.markov_head.markov_w1.weight" in weights and "mtp.0.main_proj.weight" in weights
    assert weights["mtp.0.main_proj.weight"].format == "fp8_block"
    assert weights["mtp.1.ffn.experts.3.w2.weight"].format == "mxfp4"
    assert "mtp.0.e_proj.weight" not in weights  # no MTP layer


def test_0731_loads_as_the_backbone_with_one_log_line(
    dspark: tuple[Path, DeepseekV4Model], plain: Path, caplog: pytest.LogCaptureFixture, v4: Any
) -> None:
    directory, written = dspark
    with caplog.at_level(logging.INFO, logger="deepscout.model_runtime.v4.weights.loader"):
        model, report = load_model(directory)
    lines = [r.getMessage() for r in caplog.records if "DSpark" in r.getMessage()]
    assert len(lines) == 1
    match = re.match(LOG_LINE, lines[0])
    assert match, lines[0]
    drafter = synthetic_drafter(BACKBONE)
    assert int(match.group(1)) == len(drafter.known_shapes(BACKBONE))
    assert report.variant is CheckpointVariant.V4_0731_DSPARK and report.skipped_drafter is not None
    assert report.skipped_drafter.stages == 3 and report.tensors == len(model.state_dict())
    assert model.args == BACKBONE and len(model.mtp) == 0
    assert not any(name.startswith("mtp.") for name in model.state_dict())
    # the backbone is exactly the written one, and the same backbone saved as plain V4 gives the same logits
    expected = written.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    reference, plain_report = load_model(plain)
    assert plain_report.variant is CheckpointVariant.V4 and plain_report.skipped_drafter is None
    ids = torch.randint(2, ARGS.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(ids, [v4.new_cache(model.args)])
        theirs = reference(ids, [v4.new_cache(reference.args)])
    assert torch.equal(ours, theirs)


def test_the_drafter_is_never_half_loaded_into_mtp_layers(
    dspark: tuple[Path, DeepseekV4Model], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, _ = dspark
    checkpoint = Checkpoint(directory)
    as_written = ModelArgs.from_dict(checkpoint.config)  # 3 MTP layers, as a name-matching loader would build
    assert as_written.num_mtp_layers == 3
    shared = {n for n in checkpoint.weights if n.startswith("mtp.")} & set(
        allocate_model(as_written).state_dict()
    )
    assert shared  # the stage layers share leaf names with MTP blocks: matching by name would half-load

    def no_reads(self: ShardedSafetensors, name: str) -> torch.Tensor:
        raise AssertionError(f"read {name}")

    monkeypatch.setattr(ShardedSafetensors, "read", no_reads)
    with pytest.raises(
        CheckpointError, match=r"DeepSeek-V4-Flash-0731: mtp\.\* holds a DSpark drafter, not MTP"
    ):
        load_weights(allocate_model(as_written), checkpoint)


def test_unknown_tensors_are_still_caught(ckpt: Path) -> None:
    _put(ckpt, "mtp.3.attn_norm.weight", torch.ones(256, dtype=torch.bfloat16))  # beyond the 3 stages
    _put(ckpt, "layers.7.attn_norm.weight", torch.ones(256, dtype=torch.bfloat16))
    with pytest.raises(UnexpectedTensorsError) as err:
        load_model(ckpt)
    assert err.value.names == ["layers.7.attn_norm.weight", "mtp.3.attn_norm.weight"]


def test_an_unknown_leaf_of_a_declared_stage_is_skipped_with_the_drafter(ckpt: Path) -> None:
    _put(ckpt, "mtp.2.confidence_head.proj.bias", torch.zeros(1, dtype=torch.bfloat16))
    _, report = load_model(ckpt)
    assert report.skipped_drafter is not None
    assert "mtp.2.confidence_head.proj.bias" in report.skipped_drafter.names


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("mtp.2.markov_head.markov_w1.weight", (512, 16)),  # rank 32 in config.json
        ("mtp.1.attn_norm.weight", (128,)),
        ("mtp.0.embed.weight", (256, 256)),  # a copy of the shared embedding must match it
    ],
)
def test_drafter_tensors_are_shape_checked(ckpt: Path, name: str, shape: tuple[int, ...]) -> None:
    _put(ckpt, name, torch.zeros(shape, dtype=torch.bfloat16))
    with pytest.raises(TensorShapeError, match=rf"'{name}' has shape"):
        load_model(ckpt)


def test_a_v41_config_is_refused_in_one_line(ckpt: Path) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    config |= {"architectures": ["DeepseekV41ForCausalLM"], "model_type": "deepseek_v41"}
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / INDEX_FILE).unlink()
    for shard in ckpt.glob("*.safetensors"):
        shard.write_bytes(b"not a V4 shard")  # refused from config.json, before any shard is opened
    with pytest.raises(UnsupportedCheckpointError, match=r"^config.json describes DeepSeek-V4\.1 \(") as err:
        load_model(ckpt)
    assert "\n" not in str(err.value)


def test_v4_with_mtp_still_loads_its_mtp_layer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    written = make_synthetic_checkpoint(tmp_path, ARGS, seed=6)
    with caplog.at_level(logging.INFO):
        model, report = load_model(tmp_path)
    assert report.variant is CheckpointVariant.V4 and report.skipped_drafter is None
    assert not any("DSpark" in r.getMessage() for r in caplog.records)
    assert len(model.mtp) == 1
    expected = written.state_dict()
    mtp = {n: v for n, v in model.state_dict().items() if n.startswith("mtp.0.")}
    assert "mtp.0.e_proj.weight" in mtp
    for name, value in mtp.items():
        assert torch.equal(value, expected[name]), name
