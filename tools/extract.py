"""Turn a fetched body into clean text: HTML (trafilatura, Markdown with links), PDF (pypdf), text, JSON.

Hidden HTML (``hidden``, ``aria-hidden="true"``, ``display:none``, ``visibility:hidden``) is removed before
anything else: text a reader cannot see is where injected instructions and planted links hide, so it
neither reaches the model nor counts as a link of the page.
"""

from __future__ import annotations

import copy
import io
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urljoin, urlsplit

import trafilatura
from lxml import html as lxml_html
from trafilatura.utils import load_html

from deepscout.errors import DeepscoutError

if TYPE_CHECKING:
    from pypdf import PdfReader

DocumentKind = Literal["html", "pdf", "text", "json"]

_STYLE = "translate(@style, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ ', 'abcdefghijklmnopqrstuvwxyz')"  # lower, no spaces
_HIDDEN_XPATH = (
    f"//*[@hidden or @aria-hidden='true' or contains({_STYLE}, 'display:none') or "
    f"contains({_STYLE}, 'visibility:hidden')]"
)
_CHARSET = re.compile(r"charset=[\"']?([A-Za-z0-9_.:-]+)", re.IGNORECASE)


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
    match = _CHARSET.search(content_type)
    encoding = match.group(1) if match else "utf-8"
    try:
        return body.decode(encoding, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def _tidy(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _page_links(tree: lxml_html.HtmlElement, base_url: str) -> list[str]:
    links: list[str] = []
    seen: set[str] = set()
    for href in tree.xpath("//a/@href"):
        absolute = urljoin(base_url, str(href).strip()).split("#")[0]
        if urlsplit(absolute).scheme in {"http", "https"} and absolute not in seen:
            seen.add(absolute)
            links.append(absolute)
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


def _extract_pdf(body: bytes, url: str) -> ExtractedDocument:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(body))
        pages = [page.extract_text() or "" for page in reader.pages]
        info = reader.metadata
    except (PyPdfError, ValueError, KeyError, OSError) as exc:
        raise ExtractionError(f"{url}: the PDF could not be read ({exc})") from exc
    text = "\n\n".join(f"[page {i}]\n{page.strip()}" for i, page in enumerate(pages, start=1) if page.strip())
    created = info.creation_date if info is not None else None
    return ExtractedDocument(
        kind="pdf",
        text=_tidy(text),
        title=(info.title if info is not None else None) or None,
        author=(info.author if info is not None else None) or None,
        published=created.date().isoformat() if created is not None else None,
        links=_pdf_links(reader),
    )


def _pdf_links(reader: PdfReader) -> list[str]:
    """The http(s) targets of the PDF's link annotations (URI actions), in page order."""
    from pypdf.errors import PyPdfError

    links: list[str] = []
    for page in reader.pages:
        try:
            annotations = [a.get_object() for a in (page.get("/Annots") or [])]
            for annotation in annotations:
                action = annotation.get("/A")
                uri = str(action.get("/URI", "")) if action is not None else ""
                if urlsplit(uri).scheme in {"http", "https"} and uri not in links:
                    links.append(uri)
        except (PyPdfError, AttributeError, KeyError, TypeError, ValueError):
            continue  # a malformed annotation costs its page's links, not the document
    return links


def extract_document(body: bytes, content_type: str, url: str) -> ExtractedDocument:
    """Read ``body`` (as served from ``url`` with ``content_type``) into an ``ExtractedDocument``."""
    kind = sniff_kind(content_type, body)
    if kind is None:
        raise ExtractionError(
            f"{url}: content type {content_type or 'unknown'!r} is not readable (HTML, PDF, text or JSON)"
        )
    if kind == "html":
        return _extract_html(body, url)
    if kind == "pdf":
        return _extract_pdf(body, url)
    text = _decode_text(body, content_type)
    if kind == "json":
        try:
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except json.JSONDecodeError:
            kind = "text"  # served as JSON but is not: keep the text as it came
    return ExtractedDocument(kind=kind, text=text.strip())
