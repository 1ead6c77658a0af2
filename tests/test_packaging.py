"""The sdist and the wheel build from a checkout, hold every package module and no tests, and install."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("agent", "tools", "memory", "evals", "ui", "model_runtime")


def _source_modules() -> set[str]:
    """``deepscout/<folder>/...py`` for every module of the real folders and of deepscout/ itself."""
    found = {
        f"deepscout/{p.relative_to(REPO).as_posix()}" for top in FOLDERS for p in (REPO / top).rglob("*.py")
    }
    own = REPO / "deepscout"
    found |= {
        f"deepscout/{p.relative_to(own).as_posix()}"
        for p in own.rglob("*.py")
        if not any((own / part).is_symlink() for part in p.relative_to(own).parts[:1])
    }
    return found


def _build(kind: str, source: Path, out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "build", f"--{kind}", "--no-isolation", "--outdir", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("*.tar.gz" if kind == "sdist" else "*.whl")
    return built


@pytest.mark.slow
def test_sdist_and_wheel_build_carry_the_package_and_install(tmp_path: Path) -> None:
    sdist = _build("sdist", REPO, tmp_path / "sdist")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
        archive.extractall(tmp_path / "unpacked", filter="data")
    assert not any(name.startswith("tests/") for name in names), "the sdist ships tests"
    assert _source_modules() <= names

    (unpacked,) = (tmp_path / "unpacked").iterdir()
    wheel = _build("wheel", unpacked, tmp_path / "wheel")  # the wheel is built from the sdist
    with zipfile.ZipFile(wheel) as archive:
        assert _source_modules() <= set(archive.namelist())

    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    # -S: no site processing, so the checkout's editable install (a .pth finder) is not seen; the
    # dependencies come from site-packages put on the path by hand, the package from the wheel.
    path = os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]])
    probe = "import deepscout.cli, deepscout.memory.db, deepscout.model_runtime.chat as m; print(m.__file__)"
    shown = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": path},
        cwd=tmp_path,
    )
    assert shown.stdout.strip().startswith(str(target))
