"""Process-wide set-up that only entry points (the CLI, a server, tests, benchmarks) may do, once.

Library code never changes the environment or global library state; what it needs is passed down in
:class:`deepscout.settings.Settings`.
"""

from __future__ import annotations

import os


def configure_process() -> None:
    """Keep Hugging Face libraries offline and quiet for the whole process.

    Models load from local folders only (``local_files_only``); ``HF_HUB_OFFLINE`` makes sure no library
    underneath tries the hub either. The CLI shows its own progress, so transformers' per-load progress
    bars are turned off. Variables the user set already win.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
