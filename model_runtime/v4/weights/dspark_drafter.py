"""The DSpark drafter of DeepSeek-V4-Flash-0731 as the loader sees it: which tensors are its, their shapes.

DeepSeek-V4-Flash-0731 stores a DSpark block drafter where V4 stores MTP layers, under ``mtp.{k}.`` for
``k < dspark_num_stages`` (``num_nextn_predict_layers`` when that key is absent). Its layout, as the
0731 reference code and the vLLM/SGLang DSpark loaders read it:

- every stage: one V4 layer with sliding-window attention and score-routed MoE (a layer's leaves:
  ``attn.wq_a.weight``, ``ffn.experts.{e}.w1.weight``, ``hc_attn_fn``, ...);
- stage 0: ``main_proj.weight`` ``[hidden, hidden * len(dspark_target_layer_ids)]`` (fuses the target's
  hidden states) and ``main_norm.weight``;
- the last stage: ``norm.weight``, ``hc_head_fn/base/scale``, the Markov head
  ``markov_head.markov_w{1,2}.weight`` ``[vocab, dspark_markov_rank]`` and
  ``confidence_head.proj.weight`` ``[1, hidden + dspark_markov_rank]``;
- optionally ``embed.weight`` / ``head.weight`` copies of the shared embedding and head.

This runtime does not run the drafter yet: the loader claims these tensors, checks the shape of every one
whose shape the config determines, and skips them (the model is built without MTP layers). Other names under
a declared stage are claimed unchecked (an extra leaf of the drafter must not block loading the backbone);
``mtp.*`` names outside the declared stages are not the drafter's and stay unexpected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from deepscout.model_runtime.v4.model.transformer import Block
from deepscout.model_runtime.v4.model_config import LayerKind, ModelArgs
from deepscout.model_runtime.v4.weights.checkpoint import StoredWeight
from deepscout.model_runtime.v4.weights.checkpoint_errors import CheckpointError, TensorShapeError

_STAGE = re.compile(r"^mtp\.(\d+)\.")


@dataclass(frozen=True)
class SkippedDrafter:
    """The drafter tensors a load recognised, shape-checked and did not read."""

    label: str
    declared_stages: int
    stages: int
    names: tuple[str, ...]
    stored_bytes: int

    def log_line(self) -> str:
        return (
            f"{self.label}: DSpark drafter ({self.stages} of {self.declared_stages} stages, "
            f"{len(self.names)} tensors, {self.stored_bytes / 2**30:.2f} GiB) found and skipped; "
            "speculative decoding with it is not supported yet"
        )


@dataclass(frozen=True)
class DSparkDrafter:
    """The drafter's dimensions that config.json gives (None / empty where it does not say)."""

    num_stages: int
    markov_rank: int | None = None
    target_layer_ids: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DSparkDrafter:
        stages = config.get("dspark_num_stages", config.get("num_nextn_predict_layers"))
        rank = config.get("dspark_markov_rank")
        try:
            drafter = cls(
                num_stages=int(stages) if stages is not None else 0,
                markov_rank=int(rank) if rank is not None else None,
                target_layer_ids=tuple(int(i) for i in config.get("dspark_target_layer_ids") or ()),
            )
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"config.json: unreadable dspark_* value ({exc})") from None
        if drafter.num_stages <= 0:
            raise CheckpointError(
                "config.json has dspark_* keys but no positive dspark_num_stages (or "
                "num_nextn_predict_layers), so it does not say how many DSpark stages mtp.* holds"
            )
        return drafter

    def stage_of(self, name: str) -> int | None:
        """The declared stage ``name`` belongs to, or None when it is not a drafter tensor."""
        match = _STAGE.match(name)
        stage = int(match.group(1)) if match else None
        return stage if stage is not None and stage < self.num_stages else None

    def known_shapes(self, args: ModelArgs) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every tensor the drafter is known to hold (those the config determines)."""
        hidden = args.hidden_size
        with torch.device("meta"):
            layer = Block(args, LayerKind.SLIDING, hash_routed=False)
        leaves = {name: tuple(t.shape) for name, t in layer.state_dict().items()}
        shapes = {f"mtp.{k}.{leaf}": shape for k in range(self.num_stages) for leaf, shape in leaves.items()}
        first, last = "mtp.0.", f"mtp.{self.num_stages - 1}."
        if self.target_layer_ids:
            shapes[f"{first}main_proj.weight"] = (hidden, hidden * len(self.target_layer_ids))
        shapes[f"{first}main_norm.weight"] = (hidden,)
        shapes[f"{last}norm.weight"] = (hidden,)
        shapes[f"{last}hc_head_fn"] = (args.hc_mult, args.hc_mult * hidden)
        shapes[f"{last}hc_head_base"] = (args.hc_mult,)
        shapes[f"{last}hc_head_scale"] = (1,)
        if self.markov_rank is not None:
            for which in ("markov_w1", "markov_w2"):
                shapes[f"{last}markov_head.{which}.weight"] = (args.vocab_size, self.markov_rank)
            shapes[f"{last}confidence_head.proj.weight"] = (1, hidden + self.markov_rank)
        return dict(sorted(shapes.items()))

    def claim(self, stored: Mapping[str, StoredWeight], args: ModelArgs, *, label: str) -> SkippedDrafter:
        """The checkpoint's drafter tensors, every one of known shape checked (TensorShapeError if off)."""
        shapes = self.known_shapes(args)
        for k in range(self.num_stages):
            for shared in ("embed.weight", "head.weight"):
                shapes[f"mtp.{k}.{shared}"] = (args.vocab_size, args.hidden_size)
        names = tuple(name for name in stored if self.stage_of(name) is not None)
        for name in names:
            expected = shapes.get(name)
            if expected is not None and stored[name].shape != expected:
                raise TensorShapeError(name, stored[name].shape, expected)
        return SkippedDrafter(
            label=label,
            declared_stages=self.num_stages,
            stages=len({self.stage_of(name) for name in names}),
            names=names,
            stored_bytes=sum(stored[name].nbytes for name in names),
        )
