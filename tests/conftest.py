"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """The test run is an entry point: it sets the process up as the CLI does. Without a CUDA device the
    V4 kernels run under Triton's interpreter, chosen here, before any test imports a kernel module
    (Triton reads TRITON_INTERPRET when a kernel is defined)."""
    import torch

    from deepscout.process import configure_process

    configure_process()
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
        _interpret_runtime_loop_bounds()
        _interpret_helpers_without_repatching()


def _interpret_runtime_loop_bounds() -> None:
    """Triton 3.6's interpreter holds a kernel's scalar arguments as 1-element arrays, which NumPy 2 will not
    turn into the `int` that `range(0, n, BLOCK)` needs; read the element instead (compiled kernels take
    runtime loop bounds as they are)."""
    from triton.runtime import interpreter

    patch = interpreter._patch_lang_tensor

    def patched(tensor: type, scope: object) -> None:
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))  # type: ignore[attr-defined]

    interpreter._patch_lang_tensor = patched


def _interpret_helpers_without_repatching() -> None:
    """Triton 3.6's interpreter patches `triton.language` for a kernel's launch and again at every call of a
    `@triton.jit` helper inside it (`InterpretedFunction.__call__`), though the modules the helper sees are
    the launch's, patched until it returns: 2-3 ms a call (`inspect.getmembers` over the language), about a
    third of a V4 decode step under the interpreter. Inside a launch, modules it already patched are not
    patched again; anything else is patched as before."""
    import functools
    from types import FunctionType, ModuleType

    import triton.language as tl
    from triton.runtime import interpreter

    patch_lang, run_grid = interpreter._patch_lang, interpreter.GridExecutor.__call__
    launch: dict[str, set[ModuleType] | None] = {"patched": None}  # the running launch's patched modules

    @functools.cache
    def languages(fn: FunctionType) -> frozenset[ModuleType]:
        """The language modules `fn` sees, as `_patch_lang` finds them."""
        seen = fn.__globals__.values()
        return frozenset(v for v in seen if isinstance(v, ModuleType) and v in (tl, tl.core))

    def patched_once(fn: FunctionType) -> object:
        patched, langs = launch["patched"], languages(fn)
        if patched is not None and langs <= patched:
            return interpreter._LangPatchScope()
        scope = patch_lang(fn)
        if patched is not None:
            patched |= langs
        return scope

    def launch_grid(self: object, *args: object, **kwargs: object) -> object:
        launch["patched"] = set()
        try:
            return run_grid(self, *args, **kwargs)
        finally:
            launch["patched"] = None

    interpreter._patch_lang = patched_once
    interpreter.GridExecutor.__call__ = launch_grid


@pytest.fixture(scope="session")
def hotpotqa_dir() -> Path:
    """The shared HotpotQA dev set (100 questions, 994 passages), beside the checkout."""
    path = Path(os.environ.get("DEEPSCOUT_HOTPOTQA_DIR", REPO_ROOT.parent / "shared" / "data" / "hotpotqa"))
    if not (path / "hotpotqa_train.json").is_file():
        pytest.skip(f"HotpotQA dev set not found at {path}")
    return path


@pytest.fixture
def settings(tmp_path: Path):
    """Settings isolated in a temporary home; the model cache stays shared so models are fetched once."""
    from deepscout.settings import Settings

    return Settings(home=tmp_path / "home")


@pytest.fixture(scope="session")
def smollm2_chat_model():
    """The embedded SmolLM2 chat model, fetched and converted once per machine (slow tests only)."""
    from deepscout.model_runtime.chat import load_chat_model
    from deepscout.model_runtime.chat.backends.smollm2 import fetch_smollm2
    from deepscout.settings import Settings

    shared = Settings()
    fetch_smollm2(shared, quiet=True)
    return load_chat_model("smollm2", settings=shared)


@pytest.fixture
def own_smollm2(smollm2_chat_model):
    """``own_smollm2()``: a SmolLM2 chat model of its own (its own generator thread), for a server that
    closes its models when it stops; the shared one stays open for the other tests."""
    from deepscout.model_runtime.chat import load_chat_model
    from deepscout.settings import Settings

    return lambda: load_chat_model("smollm2", settings=Settings())


ServeOnLoopback = Callable[[type[ThreadingHTTPServer], type[BaseHTTPRequestHandler]], str]


@pytest.fixture
def serve_on_loopback() -> Iterator[ServeOnLoopback]:
    """``serve(server_class, handler_class) -> "http://127.0.0.1:PORT"``: a real HTTP server on a free
    loopback port, in a thread; every server started is stopped after the test."""
    running: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def serve(server_class: type[ThreadingHTTPServer], handler_class: type[BaseHTTPRequestHandler]) -> str:
        httpd = server_class(("127.0.0.1", 0), handler_class)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        running.append((httpd, thread))
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield serve
    for httpd, thread in running:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
