"""deepscout: agentic search and long-context research on an embedded DeepSeek-V4 runtime.

The top-level folders of the repository (``agent``, ``tools``, ``memory``, ``evals``, ``ui``,
``model_runtime``) are installed under this namespace as ``deepscout.<folder>``.
"""

__version__ = "0.1.0"
