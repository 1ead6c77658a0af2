"""The one HTML rendering path: Jinja2 templates with autoescape, and Markdown through a sanitiser.

Text from the web, corpus documents and models is untrusted. Markdown is rendered by markdown-it-py with
raw HTML off, then cleaned by nh3 (an allow-list of tags and attributes; links only http, https or
same-page/relative), so no script, event handler or ``javascript:`` link survives. Answers' ``[n]``
markers become links to the sources panel (``#source-n``). The chat page uses this module; the eval
report can adopt it (``render_markdown`` and ``Renderer.page``) in place of hand-built HTML.
"""

from __future__ import annotations

import re

import nh3
from jinja2 import Environment, PackageLoader, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup

ALLOWED_TAGS = frozenset(
    {
        "a", "p", "br", "hr", "em", "strong", "code", "pre", "blockquote", "ul", "ol", "li",
        "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "sup", "del",
    }
)  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title", "class"}, "th": {"style"}, "td": {"style"}, "ol": {"start"}}
URL_SCHEMES = frozenset({"http", "https"})
_CITATION = re.compile(r"\[(\d{1,3})\]")


def sanitize_html(html: str) -> str:
    """``html`` reduced to the allowed tags and attributes, links to http/https (or relative) only."""
    return nh3.clean(
        html,
        tags=set(ALLOWED_TAGS),
        attributes={tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
        url_schemes=set(URL_SCHEMES),
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


def render_markdown(text: str, *, citations: bool = False) -> Markup:
    """Untrusted Markdown as safe HTML; with ``citations``, each ``[n]`` links to ``#source-n``."""
    html = MarkdownIt("commonmark", {"html": False}).enable("table").enable("strikethrough").render(text)
    if citations:
        html = _CITATION.sub(r'<a class="cite" href="#source-\1">[\1]</a>', html)
    return Markup(sanitize_html(html))


def safe_url(url: str | None) -> str | None:
    """``url`` when it is an http(s) URL, else None (a page or model may offer ``javascript:`` links)."""
    if url and url.split(":", 1)[0].strip().lower() in URL_SCHEMES and ":" in url:
        return url
    return None


class Renderer:
    """The package's templates (``deepscout/ui/templates``), autoescaped, with ``markdown`` as a filter."""

    def __init__(self) -> None:
        self._templates = Environment(
            loader=PackageLoader("deepscout.ui", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._templates.filters["markdown"] = render_markdown
        self._templates.filters["safe_url"] = safe_url

    def page(self, name: str, **context: object) -> str:
        return self._templates.get_template(name).render(**context)
