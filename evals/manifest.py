"""The run manifest: everything that decides an eval's results, and the run id derived from it.

The run id hashes the configuration (data set and its hash, systems, models, judge, corpus hash,
retrieval, budgets, sampling, seed). Rerunning the same configuration continues the same run and skips
finished items; any change gives a new run id. The git revision and the item limit are recorded but do
not change the id, so a longer rerun extends a run rather than starting over.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    dataset_hash: str
    systems: tuple[str, ...]
    model: str
    judge: str | None
    corpus_collection: str | None
    corpus_hash: str | None
    retrieval: str = "bm25"
    top_k: int = 5
    budgets: dict[str, Any] = Field(default_factory=dict)
    sampling: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0

    @property
    def run_id(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def git_revision(repo: Path | None = None) -> str:
    """The checkout's commit (with ``+dirty`` when it has changes), or ``unknown`` outside git."""
    cwd = repo or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def build_manifest(config: EvalConfig, *, limit: int | None) -> dict[str, Any]:
    return {
        "run_id": config.run_id,
        "config": config.model_dump(mode="json"),
        "limit": limit,
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def hash_json_lines(rows: list[dict[str, Any]]) -> str:
    """A stable content hash of a list of JSON-able rows (data set items, corpus documents)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]
