"""``deepscout v4 make-synthetic`` and ``deepscout v4 run``: generation on an official-format checkpoint
matches the in-memory model, and broken inputs end with one clear error line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from deepscout.cli import app
from deepscout.model_runtime.v4 import runtime as runtime_module
from deepscout.model_runtime.v4.checkpoint_run import greedy_generate
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import LayerKind, tiny
from deepscout.model_runtime.v4.weights.synthetic import make_synthetic_checkpoint, write_checkpoint
from deepscout.settings import V4Settings

runner = CliRunner()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DeepseekV4Model]:
    torch.set_num_threads(2)
    directory = tmp_path_factory.mktemp("v4_cli")
    return directory, make_synthetic_checkpoint(directory, seed=7)


def _run(*args: str) -> dict:
    result = runner.invoke(app, ["v4", "run", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_run_generates_what_the_written_model_generates(written: tuple[Path, DeepseekV4Model]) -> None:
    directory, model = written
    prompt = [5, 17, 300, 42, 9, 250, 77]
    out = _run(
        str(directory),
        "--prompt-ids",
        ",".join(map(str, prompt)),
        "--max-new-tokens",
        "6",
        "--no-stop-at-eos",
    )
    expected, _, _, _ = greedy_generate(model, prompt, 6)
    assert out["prompt_ids"] == prompt and out["new_ids"] == expected and len(expected) == 6
    assert out["stored_formats"]["mxfp4"] == 96 and out["tensors"] == len(model.state_dict())
    assert out["text"] is None


def test_run_with_text_uses_the_checkpoints_tokenizer(written: tuple[Path, DeepseekV4Model]) -> None:
    directory, model = written
    out = _run(str(directory), "--text", "Hi there", "--max-new-tokens", "3", "--no-stop-at-eos")
    assert len(out["prompt_ids"]) == len("Hi there") and isinstance(out["text"], str)
    expected, _, _, _ = greedy_generate(model, out["prompt_ids"], 3)
    assert out["new_ids"] == expected


def test_run_in_bfloat16_prints_a_summary(written: tuple[Path, DeepseekV4Model]) -> None:
    directory, _ = written
    result = runner.invoke(
        app,
        [
            "v4",
            "run",
            str(directory),
            "--prompt-ids",
            "1 2 3",
            "--dtype",
            "bfloat16",
            "--max-new-tokens",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "loaded 208 tensors" in result.stdout and "generated (" in result.stdout


def test_make_synthetic_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    options = [
        "--layers",
        "hca,csa",
        "--experts",
        "4",
        "--hidden-size",
        "128",
        "--vocab-size",
        "256",
        "--shard-mb",
        "0.25",
    ]
    result = runner.invoke(app, ["v4", "make-synthetic", str(tmp_path), *options])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "config.json").is_file() and len(list(tmp_path.glob("*.safetensors"))) > 1
    out = _run(str(tmp_path), "--prompt-ids", "3,4,5", "--max-new-tokens", "2", "--no-stop-at-eos")
    assert len(out["new_ids"]) == 2 and out["stored_formats"]["mxfp4"] == 3 * 4 * 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt-ids", "1,2", "--text", "x"], "exactly one of --prompt-ids or --text"),
        (["--prompt-ids", "1,b"], "must be integers"),
        (["--prompt-ids", "1,999999"], "outside this model's vocabulary"),
    ],
)
def test_run_rejects_bad_prompts(
    written: tuple[Path, DeepseekV4Model], args: list[str], message: str
) -> None:
    directory, _ = written
    result = runner.invoke(app, ["v4", "run", str(directory), *args])
    assert result.exit_code == 2 and message in result.output


def test_run_names_a_missing_shard(written: tuple[Path, DeepseekV4Model], tmp_path: Path) -> None:
    directory = Path(shutil.copytree(written[0], tmp_path / "ckpt"))
    shard = sorted(directory.glob("*.safetensors"))[0]
    shard.unlink()
    result = runner.invoke(app, ["v4", "run", str(directory), "--prompt-ids", "1"])
    assert result.exit_code == 2 and f"missing shard '{shard.name}'" in result.output


def test_text_needs_a_tokenizer(written: tuple[Path, DeepseekV4Model], tmp_path: Path) -> None:
    directory = Path(shutil.copytree(written[0], tmp_path / "ckpt"))
    (directory / "tokenizer.json").unlink()
    result = runner.invoke(app, ["v4", "run", str(directory), "--text", "hello"])
    assert result.exit_code == 2 and "has no tokenizer.json" in result.output


def test_make_synthetic_rejects_unknown_layer_kinds(tmp_path: Path) -> None:
    result = runner.invoke(app, ["v4", "make-synthetic", str(tmp_path), "--layers", "sliding,dense"])
    assert result.exit_code == 2 and "--layers takes sliding, csa, hca" in result.output


@pytest.fixture(scope="module")
def shipped_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint whose shapes a shipped-format model takes (whole 128-row FP8 blocks per wo_a group)."""
    directory = tmp_path_factory.mktemp("v4_shipped_cli")
    args = tiny((LayerKind.SLIDING, LayerKind.CSA, LayerKind.HCA), o_lora_rank=128, sliding_window=16)
    write_checkpoint(DeepseekV4Model.random(args, seed=2), directory, max_shard_bytes=1 << 20)
    return directory


def test_cli_and_runtime_take_the_weight_format(
    shipped_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`deepscout v4 run --weights shipped` generates what the dense load generates; DEEPSCOUT_V4_WEIGHTS
    reaches the loader a `deepseek-v4:PATH` spec starts."""
    outputs = []
    for weights in ("dense", "shipped"):
        args = [str(shipped_checkpoint), "--prompt-ids", "5,17,200,42", "--max-new-tokens", "4", "--json"]
        result = runner.invoke(app, ["v4", "run", *args, "--weights", weights])
        assert result.exit_code == 0, result.output
        outputs.append(json.loads(result.stdout.strip().splitlines()[-1])["new_ids"])
    assert outputs[0] == outputs[1] and len(outputs[0]) == 4

    asked: list[str] = []

    def load(directory: Path, **options: object) -> tuple[DeepseekV4Model, object]:
        asked.append(str(options["weights"]))
        raise RuntimeError("loaded")

    monkeypatch.setattr(runtime_module, "load_model", load)
    with pytest.raises(RuntimeError, match="loaded"):
        runtime_module.load_runtime(str(shipped_checkpoint), V4Settings(weights="shipped"))
    assert asked == ["shipped"]


def test_run_speculative_mtp_gives_the_plain_tokens_and_reports_acceptance(
    written: tuple[Path, DeepseekV4Model],
) -> None:
    directory, _ = written
    prompt = "5,17,300,42,9,250,77"
    common = [str(directory), "--prompt-ids", prompt, "--max-new-tokens", "6", "--no-stop-at-eos"]
    plain, spec = _run(*common), _run(*common, "--speculative", "mtp")
    assert spec["new_ids"] == plain["new_ids"] and spec["speculative"] == "mtp"
    assert spec["drafted_tokens"] >= max(spec["accepted_tokens"], 1) and spec["accepted_tokens"] >= 0
    assert 0.0 <= spec["acceptance_rate"] <= 1.0
    assert plain["acceptance_rate"] is None and plain["drafted_tokens"] is None


def test_run_speculative_mtp_needs_an_mtp_layer(tmp_path: Path) -> None:
    args = tiny((LayerKind.SLIDING, LayerKind.CSA), num_nextn_predict_layers=0, mtp_layer_types=())
    write_checkpoint(DeepseekV4Model.random(args, seed=1), tmp_path, max_shard_bytes=1 << 20)
    result = runner.invoke(app, ["v4", "run", str(tmp_path), "--prompt-ids", "1,2", "--speculative", "mtp"])
    assert result.exit_code == 2 and "needs an MTP layer" in result.output
