"""The checkpoint variant is read from config.json alone: V4 (with or without MTP), V4-Flash-0731 with its
DSpark drafter, and other architectures refused in one line naming them."""

from __future__ import annotations

from typing import Any

import pytest

from deepscout.model_runtime.v4.model_config import ModelArgs
from deepscout.model_runtime.v4.weights.checkpoint_errors import CheckpointError, UnsupportedCheckpointError
from deepscout.model_runtime.v4.weights.checkpoint_variant import CheckpointVariant, detect_variant
from deepscout.model_runtime.v4.weights.dspark_drafter import DSparkDrafter
from deepscout.model_runtime.v4.weights.synthetic import (
    flash_shaped_small,
    official_config,
    synthetic_drafter,
)

ARGS = flash_shaped_small()
NO_MTP = ARGS.with_(num_nextn_predict_layers=0, mtp_layer_types=())


def _dspark_config() -> dict[str, Any]:
    return official_config(NO_MTP, dspark=synthetic_drafter(NO_MTP))


def test_v4_with_and_without_mtp_is_plain_v4() -> None:
    for args in (ARGS, NO_MTP):
        detection = detect_variant(official_config(args))
        assert detection.variant is CheckpointVariant.V4
        assert "name DeepSeek-V4" in detection.reason and "MTP layers" in detection.reason


def test_a_config_without_architecture_keys_is_taken_as_v4() -> None:
    config = {k: v for k, v in official_config(ARGS).items() if k not in ("architectures", "model_type")}
    detection = detect_variant(config)
    assert detection.variant is CheckpointVariant.V4 and "no architectures/model_type" in detection.reason


def test_dspark_keys_mark_v4_flash_0731() -> None:
    detection = detect_variant(_dspark_config())
    assert detection.variant is CheckpointVariant.V4_0731_DSPARK
    assert detection.variant.label == "DeepSeek-V4-Flash-0731"
    assert "dspark_markov_rank" in detection.reason and "dspark_num_stages" in detection.reason
    # any dspark_* key is the marker, even one this runtime does not know
    only_one = {**official_config(ARGS), "dspark_future_option": True}
    assert detect_variant(only_one).variant is CheckpointVariant.V4_0731_DSPARK


@pytest.mark.parametrize(
    ("identity", "named"),
    [
        ({"architectures": ["DeepseekV41ForCausalLM"], "model_type": "deepseek_v41"}, "DeepSeek-V4.1"),
        ({"architectures": ["DeepseekV3ForCausalLM"]}, "DeepSeek-V3"),
        ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "LlamaForCausalLM, llama"),
    ],
)
def test_other_architectures_are_refused_in_one_line(identity: dict[str, Any], named: str) -> None:
    config = {**_dspark_config(), **identity}
    with pytest.raises(UnsupportedCheckpointError, match="does not support") as err:
        detect_variant(config)
    message = str(err.value)
    assert named in message and "\n" not in message and isinstance(err.value, CheckpointError)


def test_the_drafter_reads_its_stage_count_and_heads_from_the_config() -> None:
    drafter = DSparkDrafter.from_config(_dspark_config())
    assert drafter == synthetic_drafter(NO_MTP)
    assert drafter.stage_of("mtp.2.markov_head.markov_w1.weight") == 2
    assert drafter.stage_of("mtp.3.attn.wq_a.weight") is None
    assert drafter.stage_of("layers.0.attn_norm.weight") is None
    # without dspark_num_stages the MTP count is the stage count
    assert DSparkDrafter.from_config({"dspark_markov_rank": 8, "num_nextn_predict_layers": 2}).num_stages == 2
    with pytest.raises(CheckpointError, match="how many DSpark stages"):
        DSparkDrafter.from_config({"dspark_markov_rank": 8, "num_nextn_predict_layers": 0})


def test_known_drafter_shapes_follow_the_config() -> None:
    shapes = synthetic_drafter(NO_MTP).known_shapes(NO_MTP)
    hidden, vocab = NO_MTP.hidden_size, NO_MTP.vocab_size
    assert shapes["mtp.0.main_proj.weight"] == (hidden, 3 * hidden)
    assert shapes["mtp.2.markov_head.markov_w2.weight"] == (vocab, 32)
    assert shapes["mtp.2.confidence_head.proj.weight"] == (1, hidden + 32)
    assert shapes["mtp.1.ffn.experts.7.w2.weight"] == (hidden, NO_MTP.moe_intermediate_size)
    assert not any("compressor" in name or "tid2eid" in name for name in shapes)  # sliding, score-routed


def test_the_mtp_count_is_read_from_either_key() -> None:
    config = official_config(NO_MTP)
    assert ModelArgs.from_dict(config).num_mtp_layers == 0
    del config["num_nextn_predict_layers"]
    assert ModelArgs.from_dict({**config, "n_mtp_layers": 2}).num_mtp_layers == 2
    assert ModelArgs.from_dict(config).num_mtp_layers == 1
