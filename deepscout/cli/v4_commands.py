"""``deepscout v4 ...``: run the DeepSeek-V4 runtime on a checkpoint (issues 3 and 4)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from deepscout.cli.output import fail

if TYPE_CHECKING:
    from tokenizers import Tokenizer

app = typer.Typer(help="Run the embedded DeepSeek-V4 runtime on a checkpoint.", no_args_is_help=True)


class DtypeChoice(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"


class AttnChoice(StrEnum):
    sparse = "sparse"
    naive = "naive"


class WeightsChoice(StrEnum):
    dense = "dense"
    shipped = "shipped"


class SpeculativeChoice(StrEnum):
    off = "off"
    mtp = "mtp"


class ExpertDtypeChoice(StrEnum):
    fp4 = "fp4"
    fp8 = "fp8"


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        fail(f"--prompt-ids must be integers separated by commas or spaces, got {text!r}")


def _tokenizer(directory: Path) -> Tokenizer:
    from tokenizers import Tokenizer

    path = directory / "tokenizer.json"
    if not path.is_file():
        fail(f"--text needs {path}; this checkpoint has no tokenizer.json, pass --prompt-ids instead")
    return Tokenizer.from_file(str(path))


@app.command("run")
def run(
    checkpoint_dir: Annotated[
        Path, typer.Argument(help="Directory with config.json and safetensors shards.")
    ],
    prompt_ids: Annotated[
        str | None, typer.Option("--prompt-ids", help="Prompt token ids, e.g. '0,15,27'.")
    ] = None,
    text: Annotated[
        str | None, typer.Option("--text", help="Prompt text (needs tokenizer.json in the checkpoint).")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=0)] = 16,
    dtype: Annotated[DtypeChoice, typer.Option("--dtype", help="Dequantise weights to this dtype.")] = (
        DtypeChoice.float32
    ),
    attn_impl: Annotated[AttnChoice, typer.Option("--attn-impl")] = AttnChoice.sparse,
    weights: Annotated[
        WeightsChoice,
        typer.Option("--weights", help="FP8/MXFP4 weights dequantised (dense) or kept as shipped."),
    ] = WeightsChoice.dense,
    stop_at_eos: Annotated[bool, typer.Option("--stop-at-eos/--no-stop-at-eos")] = True,
    speculative: Annotated[
        SpeculativeChoice,
        typer.Option("--speculative", help="mtp: the MTP layer drafts, the model verifies (same tokens)."),
    ] = SpeculativeChoice.off,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Load a DeepSeek-V4 checkpoint (official format: BF16, FP8 blocks, MXFP4 experts), decode greedily."""
    import torch

    from deepscout.model_runtime.v4.checkpoint_run import PromptError, run_checkpoint
    from deepscout.model_runtime.v4.model_config import ModelConfigError
    from deepscout.model_runtime.v4.mtp_speculation import NoMtpLayerError
    from deepscout.model_runtime.v4.weights.checkpoint_errors import CheckpointError

    if (prompt_ids is None) == (text is None):
        fail("give exactly one of --prompt-ids or --text")
    tokenizer = _tokenizer(checkpoint_dir) if text is not None else None
    ids = tokenizer.encode(text).ids if tokenizer is not None else _parse_ids(prompt_ids or "")
    torch_dtype = torch.float32 if dtype is DtypeChoice.float32 else torch.bfloat16
    try:
        result = run_checkpoint(
            checkpoint_dir,
            ids,
            max_new_tokens=max_new_tokens,
            dtype=torch_dtype,
            attn_impl="sparse" if attn_impl is AttnChoice.sparse else "naive",
            stop_at_eos=stop_at_eos,
            weights=weights.value,
            speculative=speculative.value,
        )
    except (CheckpointError, ModelConfigError, PromptError, NoMtpLayerError) as exc:
        fail(str(exc))
    stats = result.draft_stats
    summary = {
        "checkpoint": str(checkpoint_dir),
        "tensors": result.load.tensors,
        "stored_formats": result.load.formats,
        "stored_bytes": result.load.stored_bytes,
        "load_seconds": round(result.load.seconds, 3),
        "prompt_ids": result.prompt_ids,
        "new_ids": result.new_ids,
        "text": tokenizer.decode(result.new_ids) if tokenizer is not None else None,
        "prefill_seconds": round(result.prefill_seconds, 4),
        "decode_seconds": round(result.decode_seconds, 4),
        "speculative": speculative.value,
        "drafted_tokens": None if stats is None else stats.drafted,
        "accepted_tokens": None if stats is None else stats.accepted,
        "acceptance_rate": None if stats is None else stats.acceptance_rate,
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(
        f"loaded {summary['tensors']} tensors {summary['stored_formats']} in {summary['load_seconds']}s"
    )
    typer.echo(f"prompt ({len(ids)} tokens): {ids}")
    typer.echo(f"generated ({len(result.new_ids)} tokens): {result.new_ids}")
    if summary["text"] is not None:
        typer.echo(f"text: {summary['text']!r}")
    typer.echo(f"prefill {summary['prefill_seconds']}s, decode {summary['decode_seconds']}s")
    if stats is not None:
        typer.echo(f"MTP drafts: {stats.accepted}/{stats.drafted} accepted (rate {stats.acceptance_rate})")


@app.command("make-synthetic")
def make_synthetic(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the checkpoint into.")],
    layers: Annotated[
        str, typer.Option("--layers", help="Attention kinds per layer: sliding, csa, hca (comma-separated).")
    ] = "sliding,csa,hca",
    hash_layers: Annotated[int, typer.Option("--hash-layers", min=0)] = 1,
    hidden_size: Annotated[int, typer.Option("--hidden-size", min=128)] = 256,
    vocab_size: Annotated[int, typer.Option("--vocab-size", min=2)] = 512,
    experts: Annotated[int, typer.Option("--experts", min=2)] = 8,
    expert_dtype: Annotated[ExpertDtypeChoice, typer.Option("--expert-dtype")] = ExpertDtypeChoice.fp4,
    shard_mb: Annotated[float, typer.Option("--shard-mb", min=0.01)] = 4.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Write a random V4-Flash-shaped checkpoint in the official format (FP8, MXFP4 experts, shards)."""
    from deepscout.model_runtime.v4.model_config import LayerKind, ModelConfigError
    from deepscout.model_runtime.v4.weights.synthetic import flash_shaped_small, make_synthetic_checkpoint

    names = {"sliding": LayerKind.SLIDING, "csa": LayerKind.CSA, "hca": LayerKind.HCA}
    requested = [part.strip().lower() for part in layers.split(",") if part.strip()]
    unknown = [part for part in requested if part not in names]
    if unknown or not requested:
        fail(f"--layers takes sliding, csa, hca separated by commas; got {layers!r}")
    if hidden_size % 128:
        fail(f"--hidden-size must be a multiple of 128 (whole FP8 128x128 blocks), got {hidden_size}")
    try:
        args = flash_shaped_small(
            tuple(names[part] for part in requested),
            num_hash_layers=hash_layers,
            hidden_size=hidden_size,
            vocab_size=vocab_size,
            n_routed_experts=experts,
        )
    except ModelConfigError as exc:
        fail(str(exc))
    make_synthetic_checkpoint(
        out_dir,
        args,
        seed=seed,
        expert_dtype="fp4" if expert_dtype is ExpertDtypeChoice.fp4 else "fp8",
        max_shard_bytes=int(shard_mb * (1 << 20)),
    )
    shards = sorted(p.name for p in out_dir.glob("*.safetensors"))
    typer.echo(f"wrote {len(shards)} shard(s), model.safetensors.index.json and config.json to {out_dir}")
