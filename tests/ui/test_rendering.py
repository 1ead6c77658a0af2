"""The shared rendering path: Markdown through markdown-it-py and nh3, templates with autoescape."""

from __future__ import annotations

from html.parser import HTMLParser

from deepscout.ui.rendering import Renderer, render_markdown, safe_url


def _elements(html: str) -> list[tuple[str, dict[str, str]]]:
    """The elements of ``html`` as a browser would build them: tag names and attributes."""
    found: list[tuple[str, dict[str, str]]] = []

    class Collector(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append((tag, {name: value or "" for name, value in attrs}))

    Collector().feed(html)
    return found


def test_markdown_keeps_formatting_and_links_citations() -> None:
    html = str(
        render_markdown(
            "**Bram Stoker** wrote *Dracula* [1], see [site](https://example.org).", citations=True
        )
    )
    assert "<strong>Bram Stoker</strong>" in html and "<em>Dracula</em>" in html
    assert '<a class="cite" href="#source-1"' in html
    assert 'href="https://example.org"' in html and 'rel="noopener noreferrer nofollow"' in html
    table = str(render_markdown("| a | b |\n|---|---|\n| 1 | 2 |"))
    assert "<table>" in table and "<td>1</td>" in table


def test_markup_scripts_handlers_and_script_links_never_survive() -> None:
    hostile = (
        "<script>alert(1)</script> <img src=x onerror=alert(2)> [x](javascript:alert(3)) "
        '[y](JaVaScRiPt:alert(4)) <a href="javascript:alert(5)">z</a> "><svg onload=alert(6)> '
        "[d](data:text/html,<script>alert(7)</script>) ![i](https://example.org/i.png)"
    )
    elements = _elements(str(render_markdown(hostile, citations=True)))
    assert {tag for tag, _ in elements} <= {"p", "a"}
    for _, attributes in elements:
        assert not any(name.startswith("on") for name in attributes)
        assert attributes.get("href", "https:").startswith(("https:", "http:", "#"))


def test_safe_url_admits_only_http_and_https() -> None:
    assert safe_url("https://example.org/a") == "https://example.org/a"
    assert safe_url("http://example.org") == "http://example.org"
    for url in ("javascript:alert(1)", " JavaScript:alert(1)", "data:text/html,x", "/relative", "", None):
        assert safe_url(url) is None


def test_templates_escape_what_they_are_given() -> None:
    page = Renderer().page(
        "chat.html", models=['"><script>x</script>'], search_modes=("local",), auth_required=False
    )
    assert "<script>x</script>" not in page and "&lt;script&gt;" in page
