"""The markers of a DSML tool-call block, as the V4 chat format writes them and its parser and grammar read
them: ``<｜DSML｜tool_calls>`` around one ``invoke`` per call, one ``parameter`` per argument."""

from __future__ import annotations

from deepscout.model_runtime.v4.chat_format.tokenizer import DSML

TOOL_CALLS_OPEN = f"<{DSML}tool_calls>"
TOOL_CALLS_CLOSE = f"</{DSML}tool_calls>"
INVOKE_OPEN = f'<{DSML}invoke name="'
INVOKE_CLOSE = f"</{DSML}invoke>"
PARAMETER_OPEN = f'<{DSML}parameter name="'
PARAMETER_CLOSE = f"</{DSML}parameter>"
TOOL_CALLS_SEPARATOR = "\n\n"
"""Written between an assistant turn's text and its tool-call block."""
