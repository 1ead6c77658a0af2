"""``deepseek-v4:PATH`` on an official-format checkpoint directory (written from random tiny weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from deepscout.model_runtime.chat import load_chat_model
from deepscout.model_runtime.chat.backends.embedded_v4 import EmbeddedV4ChatModel
from deepscout.model_runtime.v4.chat_format.tokenizer import load_v4_tokenizer
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.runtime import random_tiny_args
from deepscout.model_runtime.v4.weights.synthetic import write_checkpoint
from deepscout.settings import Settings


@pytest.mark.slow
def test_checkpoint_directory_spec_answers(tmp_path: Path, settings: Settings) -> None:
    model = DeepseekV4Model.random(random_tiny_args(load_v4_tokenizer().vocab_size), seed=3)
    directory = write_checkpoint(model, tmp_path / "v4-tiny")
    chat = load_chat_model(f"deepseek-v4:{directory}", settings=settings)
    assert isinstance(chat, EmbeddedV4ChatModel)
    assert chat.context_window == 32_768
    chat.max_new_tokens = 3
    messages = [SystemMessage("Be brief."), HumanMessage("Who wrote Dune?")]
    reply = chat.invoke(messages)
    assert reply.response_metadata["prefill"]["prompt_tokens"] == chat.count_tokens(messages)
    assert 1 <= len(reply.response_metadata["token_ids"]) <= 3
