"""Model specs → backends, and the errors a user sees for bad specs or missing models."""

from __future__ import annotations

import threading
import time

import pytest

from deepscout.model_runtime.chat import (
    GenerationCancelled,
    GenerationControl,
    GenerationDeadlineExceeded,
    ModelNotFetchedError,
    UnknownModelError,
    load_chat_model,
)
from deepscout.model_runtime.chat.backend_registry import BackendRegistry
from deepscout.settings import Settings


@pytest.mark.parametrize("spec", ["gpt-5", "smollm2:extra", "hf:", "openai", "", "  "])
def test_unknown_spec_lists_the_known_ones(spec, settings):
    with pytest.raises(UnknownModelError) as caught:
        load_chat_model(spec, settings=settings)
    message = str(caught.value)
    for usage in ("smollm2", "hf:PATH", "openai:MODEL", "deepseek-v4:PATH"):
        assert usage in message


def test_builtin_specs_parse():
    registry = BackendRegistry()
    assert registry.parse("smollm2")[0].name == "smollm2"
    assert registry.parse("hf:/models/x")[1] == "/models/x"
    assert registry.parse("openai:deepseek-v4-flash")[1] == "deepseek-v4-flash"
    assert registry.parse("deepseek-v4:random-tiny")[1] == "random-tiny"
    assert [entry.name for entry in registry.entries()][:4] == ["smollm2", "hf", "openai", "deepseek-v4"]


def test_missing_smollm2_names_the_setup_command(tmp_path):
    empty = Settings(home=tmp_path / "home", cache_dir=tmp_path / "cache")
    with pytest.raises(ModelNotFetchedError, match="deepscout setup"):
        load_chat_model("smollm2", settings=empty)


def test_hf_folder_without_config_is_a_clear_error(tmp_path, settings):
    with pytest.raises(ModelNotFetchedError, match=r"no config\.json"):
        load_chat_model(f"hf:{tmp_path}", settings=settings)


def test_registered_backend_gets_argument_and_settings(settings):
    seen = {}

    def factory(argument, received_settings):
        seen["args"] = (argument, received_settings)
        return "a model"

    registry = BackendRegistry()
    registry.register("test-echo", factory, usage="test-echo:X")
    assert load_chat_model("test-echo:abc", settings=settings, registry=registry) == "a model"
    with pytest.raises(UnknownModelError):
        load_chat_model("test-echo:abc", settings=settings)  # registered on that registry alone
    assert seen["args"] == ("abc", settings)


def test_generation_control_deadline_and_cancel():
    GenerationControl.from_kwargs({}).check("prefill")
    with pytest.raises(GenerationDeadlineExceeded, match="prefill"):
        GenerationControl.from_kwargs({"deadline": time.monotonic() - 1}).check("prefill")
    event = threading.Event()
    control = GenerationControl.from_kwargs({"cancel": event})
    control.check("decode")
    event.set()
    with pytest.raises(GenerationCancelled, match="decode"):
        control.check("decode")
    with pytest.raises(TypeError, match=r"threading\.Event"):
        GenerationControl.from_kwargs({"cancel": True})
    assert issubclass(GenerationDeadlineExceeded, TimeoutError)
