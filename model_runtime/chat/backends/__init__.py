"""The built-in chat-model backends (listed in :mod:`deepscout.model_runtime.chat.backend_registry`).

Each module exposes ``load_chat_model(argument, settings) -> ChatModel`` or a named factory, and is
imported only when its backend loads.
"""
