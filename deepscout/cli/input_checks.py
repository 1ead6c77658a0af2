"""Checks of what a user typed, before anything runs: each bad input is one clear line, not a traceback.

Command-line text arrives as ``str`` decoded with ``surrogateescape``, so bytes that are not UTF-8 show
up as lone surrogates; they and NUL characters cannot be stored (PostgreSQL refuses NUL) nor sent to a
model, so such text is refused here. Settings and options that pydantic refuses are reported as one
line naming each field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deepscout.cli.output import fail
from deepscout.text.storable import unstorable_reason

if TYPE_CHECKING:
    from pydantic import ValidationError


def check_text(value: str, what: str) -> None:
    """Exit with a clear error when ``value`` holds NUL characters or bytes that are not UTF-8."""
    reason = unstorable_reason(value)
    if reason is not None:
        fail(f"the {what} {reason}")


def validation_summary(error: ValidationError) -> str:
    """One line for a pydantic error: ``field: problem`` for each field, joined by ``; ``."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'value'}: {item['msg']}" for item in error.errors()
    )
