"""Turn a fetched body into clean text: HTML (trafilatura, Markdown with links), PDF (pypdf), text, JSON.

Hidden HTML (``hidden``, ``aria-hidden="true"``, ``display:none``, ``visibility:hidden``) is removed before
anything else: text a reader cannot see is where injected instructions and planted links hide, so it
neither reaches the model nor counts as a link of the page.

Hostile bodies fail as :class:`ExtractionError`, never as a raw exception: an unknown or non-text charset
(``charset=idna``) falls back to UTF-8, a malformed link (``href="http://[oops/"``) is skipped, JSON nested
too deep is kept as text, a body with nothing readable (all NUL bytes) is an error, not an empty page.
Text is collected only up to ``max_chars`` (a PDF stops reading pages there). Time and memory are bounded
by the worker process this runs in (``tools/extraction_pool.py``), not here.
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import io
import json
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urljoin, urlsplit

import trafilatura
from lxml import html as lxml_html
from trafilatura.utils import load_html

from deepscout.errors import DeepscoutError

if TYPE_CHECKING:
    from pypdf import PageObject

DocumentKind = Literal["html", "pdf", "text", "json"]

_STYLE = "translate(@style, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ ', 'abcdefghijklmnopqrstuvwxyz')"  # lower, no spaces
_HIDDEN_XPATH = (
    f"//*[@hidden or @aria-hidden='true' or contains({_STYLE}, 'display:none') or "
    f"contains({_STYLE}, 'visibility:hidden')]"
)
_CHARSET = re.compile(r"charset=[\"']?([A-Za-z0-9_.:-]+)", re.IGNORECASE)
_UNREADABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]+")  # controls other than \t \n \r
DEFAULT_MAX_CHARS = 2_000_000
MAX_LINKS = 1000


class ExtractionError(DeepscoutError, ValueError):
    """A body that cannot be read as a document (unknown type, broken PDF, empty page)."""


@dataclass
class ExtractedDocument:
    kind: DocumentKind
    text: str
    title: str | None = None
    author: str | None = None
    published: str | None = None
    links: list[str] = field(default_factory=list)
    text_truncated: bool = False
    """True when the document held more than ``max_chars`` characters of text."""


def sniff_kind(content_type: str, body: bytes) -> DocumentKind | None:
    """The document kind from the Content-Type header, or from the first bytes when the header is vague."""
    mime = content_type.split(";")[0].strip().lower()
    if mime in {"text/html", "application/xhtml+xml"}:
        return "html"
    if mime == "application/pdf":
        return "pdf"
    if mime == "application/json" or mime.endswith("+json"):
        return "json"
    if mime.startswith("text/"):
        return "text"
    head = body[:512].lstrip().lower()
    if head.startswith(b"%pdf-"):
        return "pdf"
    if head.startswith((b"<!doctype html", b"<html")):
        return "html"
    if mime in {"", "application/octet-stream", "binary/octet-stream"} and head.startswith((b"{", b"[")):
        return "json"
    return None


def _decode_text(body: bytes, content_type: str) -> str:
    """``body`` decoded with the charset the header names when that is a known text encoding (not a
    codec such as ``idna``, ``rot13`` or ``base64``), else as UTF-8; undecodable bytes become U+FFFD."""
    match = _CHARSET.search(content_type)
    encoding = match.group(1) if match else "utf-8"
    try:
        if codecs.lookup(encoding)._is_text_encoding and encoding.lower() not in {"idna", "punycode"}:
            return body.decode(encoding, errors="replace")
    except (LookupError, UnicodeError, ValueError):
        pass
    return body.decode("utf-8", errors="replace")


def _tidy(text: str) -> str:
    text = _UNREADABLE.sub("", text)
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _page_links(tree: lxml_html.HtmlElement, base_url: str) -> list[str]:
    links: list[str] = []
    seen: set[str] = set()
    for href in tree.xpath("//a/@href"):
        try:
            absolute = urljoin(base_url, str(href).strip()).split("#")[0]
            scheme = urlsplit(absolute).scheme
        except ValueError:  # http://[oops/ and the like: this link is skipped, the page is not
            continue
        if scheme in {"http", "https"} and absolute not in seen:
            seen.add(absolute)
            links.append(absolute)
            if len(links) >= MAX_LINKS:
                break
    return links


def _extract_html(body: bytes, url: str) -> ExtractedDocument:
    tree = load_html(body)
    if tree is None:
        raise ExtractionError(f"{url}: the HTML could not be parsed")
    for element in tree.xpath(_HIDDEN_XPATH):
        element.drop_tree()
    links = _page_links(tree, url)
    metadata = trafilatura.extract_metadata(copy.deepcopy(tree), default_url=url)
    text = trafilatura.extract(
        copy.deepcopy(tree),
        url=url,
        output_format="markdown",
        include_links=True,
        include_formatting=True,
        include_tables=True,
        favor_recall=True,
    )
    if not text:  # pages with little prose (lists, link hubs): fall back to the visible text
        text = tree.text_content()
    title = metadata.title if metadata is not None else None
    if title and not _tidy(text).startswith("# "):
        text = f"# {title}\n\n{text}"
    return ExtractedDocument(
        kind="html",
        text=_tidy(text),
        title=title,
        author=metadata.author if metadata is not None else None,
        published=metadata.date if metadata is not None else None,
        links=links,
    )


def _extract_pdf(body: bytes, url: str, max_chars: int, stop_at: float | None) -> ExtractedDocument:
    """The PDF's pages as text, read in order until ``max_chars`` are collected or the ``stop_at`` time
    (``time.monotonic()``) has come (later pages are never parsed, and the text counts as truncated); a
    page that cannot be read is skipped, and so are its links."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(body))
        pages = reader.pages
        info = reader.metadata
        count = len(pages)
    except (PyPdfError, ValueError, KeyError, TypeError, OSError, RecursionError) as exc:
        raise ExtractionError(f"{url}: the PDF could not be read ({exc})") from exc
    parts: list[str] = []
    links: dict[str, None] = {}
    collected = 0
    stopped = False
    for number in range(count):
        if collected >= max_chars or (stop_at is not None and time.monotonic() >= stop_at):
            stopped = number < count
            break
        try:
            page = pages[number]
            text = _tidy(page.extract_text() or "")
        except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            continue  # a malformed page costs itself, not the document
        with contextlib.suppress(PyPdfError, ValueError, KeyError, TypeError, AttributeError):
            _add_pdf_links(page, links)  # a malformed annotation costs the page's links, not its text
        if text:
            parts.append(f"[page {number + 1}]\n{text}")
            collected += len(parts[-1]) + 2
    title = author = created = None
    if info is not None:
        with contextlib.suppress(PyPdfError, ValueError, KeyError, TypeError, AttributeError):
            title, author, created = info.title, info.author, info.creation_date
    return ExtractedDocument(
        kind="pdf",
        text="\n\n".join(parts),
        title=title or None,
        author=author or None,
        published=created.date().isoformat() if created is not None else None,
        links=list(links),
        text_truncated=stopped,
    )


def _add_pdf_links(page: PageObject, links: dict[str, None]) -> None:
    """Add the http(s) targets of the page's link annotations (URI actions) to ``links``, in order."""
    for reference in page.get("/Annots") or []:
        if len(links) >= MAX_LINKS:
            return
        action = reference.get_object().get("/A")
        uri = str(action.get("/URI", "")) if action is not None else ""
        if urlsplit(uri).scheme in {"http", "https"}:
            links.setdefault(uri, None)


def _extract_json(body: bytes, content_type: str) -> ExtractedDocument:
    text = _decode_text(body, content_type)
    try:
        return ExtractedDocument(kind="json", text=json.dumps(json.loads(text), indent=2, ensure_ascii=False))
    except (ValueError, RecursionError):  # not JSON after all, or nested too deep to re-indent: kept as is
        return ExtractedDocument(kind="text", text=text)


def extract_document(
    body: bytes,
    content_type: str,
    url: str,
    *,
    max_chars: int = DEFAULT_MAX_CHARS,
    stop_at: float | None = None,
) -> ExtractedDocument:
    """Read ``body`` (as served from ``url`` with ``content_type``) into an ``ExtractedDocument`` of at most
    ``max_chars`` characters of text; a PDF stops reading pages at ``stop_at`` (``time.monotonic()``) and
    keeps what it read. Raises ``ExtractionError`` when nothing readable is in it."""
    kind = sniff_kind(content_type, body)
    if kind is None:
        raise ExtractionError(
            f"{url}: content type {content_type or 'unknown'!r} is not readable (HTML, PDF, text or JSON)"
        )
    if kind == "html":
        doc = _extract_html(body, url)
    elif kind == "pdf":
        doc = _extract_pdf(body, url, max_chars, stop_at)
    elif kind == "json":
        doc = _extract_json(body, content_type)
    else:
        doc = ExtractedDocument(kind="text", text=_decode_text(body, content_type))
    text = _UNREADABLE.sub("", doc.text).strip() if kind in {"text", "json"} else doc.text
    if not text:
        raise ExtractionError(f"{url}: the page has no readable text")
    doc.text_truncated = doc.text_truncated or len(text) > max_chars
    doc.text = text[:max_chars]
    doc.links = doc.links[:MAX_LINKS]
    return doc
