"""A V4 model built with `weights="shipped"` keeps the checkpoint's FP8 projections and MXFP4 experts as
stored: loaded from an official-format checkpoint it holds the stored bytes exactly and gives the logits
of the same checkpoint loaded dequantised; built random it holds fp8/uint8 buffers on its device; casts
leave the formats alone."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import cast

import pytest
import torch
from safetensors.torch import load_file, save_file

from deepscout.model_runtime.v4.cache.contiguous import ContiguousSequenceCache
from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.mxfp4_stacks import Mxfp4ExpertStacks
from deepscout.model_runtime.v4.model.fp8_linear_module import Fp8BlockLinear
from deepscout.model_runtime.v4.model.moe import RoutedExperts
from deepscout.model_runtime.v4.model.transformer import Block, DeepseekV4Model, MTPBlock
from deepscout.model_runtime.v4.model_config import LayerKind, ModelConfigError, tiny
from deepscout.model_runtime.v4.weights.checkpoint import Checkpoint
from deepscout.model_runtime.v4.weights.checkpoint_errors import TensorDtypeError
from deepscout.model_runtime.v4.weights.loader import load_model, shipped_targets
from deepscout.model_runtime.v4.weights.quant import QuantizedTensor, dequantize_fp8_block
from deepscout.model_runtime.v4.weights.safetensors_stream import INDEX_FILE
from deepscout.model_runtime.v4.weights.synthetic import official_storage, write_checkpoint

# tiny, with each wo_a group whole 128-row FP8 blocks; everything else tiny's (ragged FP8 edge blocks)
ARGS = tiny((LayerKind.SLIDING, LayerKind.CSA, LayerKind.HCA), o_lora_rank=128, sliding_window=16)
IDS = torch.randint(2, ARGS.vocab_size, (1, 40), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(2)
    directory = tmp_path_factory.mktemp("v4_shipped")
    write_checkpoint(DeepseekV4Model.random(ARGS, seed=2), directory, max_shard_bytes=1 << 20)
    return directory


@pytest.fixture(scope="module")
def shipped(checkpoint_dir: Path) -> DeepseekV4Model:
    return load_model(checkpoint_dir, weights="shipped")[0]


def _logits(model: DeepseekV4Model, kernels: KernelImpl, decode_steps: int = 3) -> torch.Tensor:
    """Prefill in two chunks (the window wraps), then greedy decode steps, all rows' logits (on the
    model's device)."""
    model.kernels = kernels
    args = model.args
    device = model.embed.weight.device
    cache = ContiguousSequenceCache(
        [*args.layer_types, *args.mtp_layer_types],
        head_dim=args.head_dim,
        index_head_dim=args.index_head_dim,
        sliding_window=args.sliding_window,
        device=device,
    )
    ids = IDS.to(device)
    with torch.no_grad():
        out = [model(ids[:, :25], [cache])[0], model(ids[:, 25:], [cache])[0]]
        for _ in range(decode_steps):
            out.append(model(out[-1][-1].argmax().view(1, 1), [cache])[0])
    return torch.cat(out)


def _relative(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


def test_shipped_and_dense_loads_give_the_same_logits(checkpoint_dir: Path, shipped: DeepseekV4Model) -> None:
    """In float32 both multiply by the same exactly dequantised weights (the shipped model dequantises its
    bytes per call): the logits agree bit for bit."""
    dense = load_model(checkpoint_dir)[0]
    assert torch.equal(_logits(shipped, "reference"), _logits(dense, "reference"))


def test_shipped_triton_matches_reference(shipped: DeepseekV4Model) -> None:
    """The W8A16 FP8 linear and W4A16 MXFP4 grouped MoE kernels (on the CUDA device when there is one,
    else under Triton's interpreter) against the dequantising references (and every other fused kernel
    against its reference), float32 activations: accumulation-order error only (3e-7 measured on the CPU;
    bound 1e-5 of max|logit|)."""
    model = copy.deepcopy(shipped).to("cuda" if torch.cuda.is_available() else "cpu")
    reference = _logits(model, "reference", decode_steps=1)
    fused = _logits(model, "triton", decode_steps=1)
    assert _relative(fused, reference) < 1e-5


def test_shipped_buffers_hold_the_checkpoint_bytes(checkpoint_dir: Path, shipped: DeepseekV4Model) -> None:
    targets = shipped_targets(shipped)
    checkpoint = Checkpoint(checkpoint_dir)
    try:
        kinds = {name: official_storage(name) for name in checkpoint.weights}
        assert set(targets) == {name for name, kind in kinds.items() if kind in ("fp8_block", "mxfp4")}
        for name, target in targets.items():
            stored = checkpoint.read_stored(name)
            assert isinstance(stored, QuantizedTensor) and stored.format == target.format == kinds[name]
            assert torch.equal(target.data.view(torch.uint8), stored.data.view(torch.uint8)), name
            assert torch.equal(target.scale.view(torch.uint8), stored.scale.view(torch.uint8)), name
    finally:
        checkpoint.close()
    # the per-expert buffers are views into the stacks the grouped kernel reads
    for experts in (m for m in shipped.modules() if isinstance(m, RoutedExperts)):
        assert isinstance(experts.stacks, Mxfp4ExpertStacks) and experts.is_stacked()


def test_float_checkpoint_into_shipped_model_is_refused(tmp_path: Path) -> None:
    """A weight stored in BF16 (as a dequantised export holds it) is loaded by the dense model only: the
    shipped one never re-quantises."""
    write_checkpoint(DeepseekV4Model.random(ARGS, seed=2), tmp_path, max_shard_bytes=1 << 20)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    name, scale_name = "layers.0.attn.wq_a.weight", "layers.0.attn.wq_a.scale"
    shard = tmp_path / index["weight_map"].pop(scale_name)
    tensors = load_file(shard)
    weight = dequantize_fp8_block(tensors[name], tensors.pop(scale_name))
    save_file({**tensors, name: weight.to(torch.bfloat16)}, shard, metadata={"format": "pt"})
    (tmp_path / INDEX_FILE).write_text(json.dumps(index))
    load_model(tmp_path)
    with pytest.raises(TensorDtypeError, match=r"'layers.0.attn.wq_a.weight' is stored as bfloat16.*dense"):
        load_model(tmp_path, weights="shipped")


def _formats(model: DeepseekV4Model) -> None:
    block = cast(Block, model.layers[1])
    mtp = cast(MTPBlock, model.mtp[0])
    fp8 = [block.attn.wq_a, block.attn.wo_a, block.ffn.shared_experts.w2, mtp.e_proj, mtp.h_proj]
    assert block.attn.indexer is not None
    fp8.append(cast(Fp8BlockLinear, block.attn.indexer.wq_b))
    for layer in fp8:
        assert isinstance(layer, Fp8BlockLinear) and layer.weight.dtype == torch.float8_e4m3fn
        assert layer.scale.dtype == torch.float8_e8m0fnu
    stacks = block.ffn.experts.stacks
    assert isinstance(stacks, Mxfp4ExpertStacks)
    assert all(getattr(stacks, f).dtype == torch.uint8 for f in ("w1", "w2", "w3", "w1_scale", "w2_scale"))
    assert block.ffn.experts.is_stacked()
    assert block.attn.compressor is not None and block.attn.compressor.wkv.weight.dtype == model.dtype
    assert block.ffn.gate.weight.dtype == model.dtype and model.head.weight.dtype == model.dtype


def test_random_shipped_model_holds_the_formats_and_runs() -> None:
    model = DeepseekV4Model.random(ARGS, seed=1, weights="shipped").eval()
    _formats(model)
    logits = _logits(model, "reference", decode_steps=1)
    assert torch.isfinite(logits).all() and float(logits.std()) > 0.1
    # the hyper-parameters that do not fit the blocks are refused in one line
    with pytest.raises(ModelConfigError, match="o_lora_rank a multiple of 128"):
        DeepseekV4Model(tiny(), weights="shipped")


def test_bfloat16_keeps_the_shipped_formats() -> None:
    model = DeepseekV4Model.random(ARGS, seed=1, weights="shipped").eval()
    before = {name: t.clone() for name, t in model.state_dict().items() if not t.is_floating_point()}
    before |= {n: t.clone() for n, t in model.state_dict().items() if t.dtype == torch.float8_e4m3fn}
    model.to(torch.bfloat16)
    assert model.dtype == torch.bfloat16
    _formats(model)
    state = model.state_dict()
    assert all(torch.equal(state[n].view(torch.uint8), t.view(torch.uint8)) for n, t in before.items())


def test_dense_model_is_unchanged_by_the_switch() -> None:
    """The default builds what it built before: nn.Linear projections and float stacked experts."""
    model = DeepseekV4Model.random(ARGS, seed=1)
    assert model.weight_format == "dense" and not shipped_targets(model)
    assert not any(t.dtype in (torch.uint8, torch.float8_e4m3fn) for t in model.state_dict().values())
