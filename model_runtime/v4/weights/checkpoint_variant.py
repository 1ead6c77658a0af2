"""Which DeepSeek-V4 checkpoint variant a config.json describes, decided from the config alone.

Rules, in order (tensor names are never consulted: ``mtp.{k}.*`` means different things in different
variants):

1. ``architectures`` / ``model_type``, when given, must name DeepSeek-V4 (``DeepseekV4ForCausalLM`` /
   ``deepseek_v4``); anything else is refused with one line naming it (DeepSeek-V4.1, V3, ... by name).
   A config with neither key is taken as V4 (hand-written and transformers-converted configs omit them).
2. Any key starting with ``dspark_`` marks DeepSeek-V4-Flash-0731: V4's backbone, whose ``mtp.*`` tensors
   are a DSpark block drafter (see :mod:`.dspark_drafter`), not MTP layers.
3. Otherwise plain DeepSeek-V4, with ``num_nextn_predict_layers`` MTP layers (0 = none).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from deepscout.model_runtime.v4.weights.checkpoint_errors import UnsupportedCheckpointError

DSPARK_KEY_PREFIX = "dspark_"
V4_ARCHITECTURE = "DeepseekV4ForCausalLM"
V4_MODEL_TYPE = "deepseek_v4"

#: Architectures / model types of other DeepSeek models, named in the refusal.
_OTHER_MODELS = {
    "DeepseekV41ForCausalLM": "DeepSeek-V4.1",
    "deepseek_v41": "DeepSeek-V4.1",
    "deepseek_v4_1": "DeepSeek-V4.1",
    "DeepseekV3ForCausalLM": "DeepSeek-V3",
    "deepseek_v3": "DeepSeek-V3",
    "DeepseekV32ForCausalLM": "DeepSeek-V3.2",
    "deepseek_v32": "DeepSeek-V3.2",
}


class CheckpointVariant(StrEnum):
    """The checkpoint variants this runtime loads."""

    V4 = "v4"
    """DeepSeek-V4 (e.g. V4-Flash), with or without MTP layers."""
    V4_0731_DSPARK = "v4-0731-dspark"
    """DeepSeek-V4-Flash-0731: V4's backbone plus a DSpark drafter stored under ``mtp.*``."""

    @property
    def label(self) -> str:
        """The variant's name in messages."""
        return "DeepSeek-V4-Flash-0731" if self is CheckpointVariant.V4_0731_DSPARK else "DeepSeek-V4"


@dataclass(frozen=True)
class VariantDetection:
    """The detected variant and the config evidence for it (one line)."""

    variant: CheckpointVariant
    reason: str


def detect_variant(config: dict[str, Any]) -> VariantDetection:
    """The variant ``config`` (a parsed config.json) describes; UnsupportedCheckpointError otherwise."""
    declared = _declared_names(config)
    foreign = [name for name in declared if name not in (V4_ARCHITECTURE, V4_MODEL_TYPE)]
    if foreign:
        model = next((_OTHER_MODELS[n] for n in foreign if n in _OTHER_MODELS), None)
        what = f"{model} ({', '.join(foreign)})" if model else f"architecture {', '.join(foreign)}"
        raise UnsupportedCheckpointError(
            f"config.json describes {what}, which this runtime does not support; it runs DeepSeek-V4 "
            f"({V4_ARCHITECTURE}) checkpoints"
        )
    source = "architectures/model_type name DeepSeek-V4" if declared else "no architectures/model_type given"
    dspark_keys = sorted(key for key in config if key.startswith(DSPARK_KEY_PREFIX))
    if dspark_keys:
        return VariantDetection(
            CheckpointVariant.V4_0731_DSPARK,
            f"{source}; DSpark drafter keys {', '.join(dspark_keys)}",
        )
    return VariantDetection(CheckpointVariant.V4, f"{source}; no dspark_* keys, so mtp.* are MTP layers")


def _declared_names(config: dict[str, Any]) -> list[str]:
    architectures = config.get("architectures") or []
    if isinstance(architectures, str):
        architectures = [architectures]
    model_type = config.get("model_type")
    return [str(a) for a in architectures] + ([str(model_type)] if model_type else [])
