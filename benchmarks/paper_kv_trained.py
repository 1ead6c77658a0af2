"""The paper KV layout against BF16 KV on a trained model: greedy agreement where the logits are not flat.

`paper_kv_agreement.py` measures the layout on the V4-Flash-shaped stack with random weights, whose
next-token distribution is nearly flat over 129K tokens: its disagreements are exact ties or within one
bf16 step of the top logit, so they say more about random weights than about the layout. This script
trains a small model of V4's architecture on text first, so its predictions are as peaked as a language
model's, then measures the same thing.

The model: V4's attention at the paper layout's real entry shapes (head_dim 512 with 64 RoPE dims, so main
entries are 448 FP8 dims + 64 BF16 dims; indexer keys of 128 dims in MXFP4), hidden 256, `--layers` layers
(one sliding, then CSA and HCA alternating: window 128, ratios 4 and 128, top-32 of the indexer), 8 routed
experts top-2 (the first layer hash-routed), mHC; a byte-level vocabulary (256). It is trained in float32
on `--device` (the PyTorch reference path: the fused kernels have no backward) for `--train-seconds` on the
HotpotQA corpus's passages (every tenth passage held out), AdamW, sequences of `--seq` bytes. On a GPU the
engines then decode on the fused kernels and the device decode path, as the runtime serves.

Then two engines that share the model — compressed entries kept as BF16 rows, or in the paper layout,
quantised as the engine stores them — read `--context` bytes of the held-out passages and decode `--steps`
more, both teacher-forced on the held-out text itself. Reported: the share of steps whose greedy byte
agrees (and counting exact ties in the BF16 logits), the max and median relative logit error, as in
`paper_kv_agreement.py`; the model's held-out loss (nats/byte) and top-1 accuracy under BF16 KV, and the
median gap between its two best logits, which show how peaked its predictions are.

    python benchmarks/paper_kv_trained.py --train-seconds 900                        # 4 layers, CPU
    python benchmarks/paper_kv_trained.py --layers 43 --device cuda --train-seconds 300  # at depth, a GPU

Prints a table and writes `benchmarks/results/paper_kv_trained.json` (or `--json PATH`).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from paper_kv_agreement import Recorder, compare, decode, report

from deepscout.model_runtime.v4.checkpoint_run import new_sequence_cache
from deepscout.model_runtime.v4.kernels.impl import default_impl
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import LayerKind, ModelArgs, tiny

REPO = Path(__file__).resolve().parents[1]


def small_v4(layers: int) -> ModelArgs:
    """V4's architecture at the paper layout's entry shapes, small elsewhere (see the module docstring)."""
    kinds = [LayerKind.SLIDING] + [(LayerKind.CSA, LayerKind.HCA)[i % 2] for i in range(layers - 1)]
    return tiny(
        tuple(kinds),
        vocab_size=256,
        hidden_size=256,
        moe_intermediate_size=256,
        num_attention_heads=4,
        head_dim=512,
        qk_rope_head_dim=64,
        q_lora_rank=256,
        o_groups=2,
        o_lora_rank=128,
        index_n_heads=4,
        index_head_dim=128,
        index_topk=32,
    )


def passages(hotpotqa: Path) -> tuple[bytes, bytes]:
    """(training text, held-out text): the corpus's passages in title order, every tenth held out."""
    corpus = json.loads((hotpotqa / "hotpotqa_train_corpus.json").read_text(encoding="utf-8"))
    texts = [f"{title}: {''.join(sentences)}" for title, sentences in sorted(corpus.items())]
    train = "\n\n".join(t for i, t in enumerate(texts) if i % 10)
    held = "\n\n".join(t for i, t in enumerate(texts) if not i % 10)
    return train.encode("utf-8"), held.encode("utf-8")


def train(model: DeepseekV4Model, data: bytes, *, seconds: float, seq: int, batch: int) -> dict[str, Any]:
    """AdamW on random windows of `data` until `seconds` have passed; returns the steps, bytes seen and
    the mean loss of the last 20 steps."""
    args = model.args
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    rng = random.Random(0)
    device = model.embed.weight.device
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long().to(device)
    losses: list[float] = []
    model.train()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        offsets = [rng.randrange(len(tokens) - seq - 1) for _ in range(batch)]
        window = torch.stack([tokens[o : o + seq + 1] for o in offsets])
        caches = [new_sequence_cache(model) for _ in range(batch)]
        for group in optimizer.param_groups:  # 50 warm-up steps
            group["lr"] = 2e-3 * min(1.0, (len(losses) + 1) / 50)
        logits = model(window[:, :-1], caches)
        loss = F.cross_entropy(logits.reshape(-1, args.vocab_size).float(), window[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if len(losses) % 25 == 0:
            print(f"step {len(losses)}: loss {sum(losses[-25:]) / 25:.3f} nats/byte", flush=True)
    model.eval()
    return {
        "train_steps": len(losses),
        "train_bytes": len(losses) * batch * seq,
        "train_seconds": round(time.perf_counter() - start, 1),
        "train_loss_last20": round(sum(losses[-20:]) / max(len(losses[-20:]), 1), 3),
    }


def held_out_fit(logits: list[torch.Tensor], follow: list[int]) -> dict[str, Any]:
    """Loss, top-1 accuracy and median top-2 logit gap of the recorded logits on the followed bytes."""
    stacked = torch.stack(logits).float()
    target = torch.tensor(follow[: len(logits)], device=stacked.device)
    top2 = stacked.topk(2, dim=-1).values
    return {
        "held_out_loss_nats_per_byte": round(float(F.cross_entropy(stacked, target)), 3),
        "held_out_top1_accuracy": round(float((stacked.argmax(-1) == target).float().mean()), 4),
        "median_top2_gap": round(float((top2[:, 0] - top2[:, 1]).median()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hotpotqa", type=Path, default=REPO.parent / "shared" / "data" / "hotpotqa")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-seconds", type=float, default=900.0)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=None)
    opts = parser.parse_args()
    torch.manual_seed(0)
    train_text, held_text = passages(opts.hotpotqa)
    device = torch.device(opts.device)
    model = DeepseekV4Model.random(small_v4(opts.layers), seed=0, device=device)
    fit = train(model, train_text, seconds=opts.train_seconds, seq=opts.seq, batch=opts.batch)
    model.kernels = default_impl(device)
    held = list(held_text[: opts.context + opts.steps])
    prompt, follow = held[: opts.context], held[opts.context :]
    with torch.no_grad():
        reference, forced = Recorder(follow=follow), Recorder(follow=follow)
        bf16 = decode(model, "bfloat16", prompt, opts.steps, reference)
        paper = decode(model, "paper", prompt, opts.steps, forced)
    result = {
        "context": opts.context,
        "layers": opts.layers,
        "device": str(device),
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        **fit,
        **held_out_fit(reference.logits, follow),
        "bf16": bf16,
        "paper": paper,
        **compare(reference.logits, forced.logits),
        "uniform_loss_nats_per_byte": round(math.log(256), 3),
    }
    report(result, benchmark="paper_kv_trained", path=opts.json)


if __name__ == "__main__":
    main()
