"""The guarded HTTP client and extraction against the real loopback server: real-world pages, caps,
redirects, timeouts and the total deadline."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from pathlib import Path

import pytest

from deepscout.tools.extract import extract_document
from deepscout.tools.guards import DomainRateLimiter
from deepscout.tools.http_client import FetchDeadlineExceeded, FetchError, GuardedHttpClient, RawResponse

TLS_CERT = Path(__file__).resolve().parent / "web_fixtures" / "localhost-cert.pem"


def _get(settings, url: str) -> RawResponse:
    return asyncio.run(GuardedHttpClient(settings, DomainRateLimiter(0.0)).get(url))


def _get_measured(settings, url: str) -> tuple[RawResponse, int]:
    """The response and the peak of Python memory allocated while fetching it."""
    tracemalloc.start()
    try:
        response = _get(settings, url)
        return response, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_article_keeps_main_text_and_metadata_and_drops_boilerplate(web_server, web_settings) -> None:
    response = _get(web_settings, web_server.url("/article"))
    assert response.status == 200 and not response.truncated
    doc = extract_document(response.body, response.content_type, response.final_url)
    assert doc.kind == "html"
    assert doc.title == "Glacier retreat in the Alps doubled since 2000"
    assert doc.author == "Maria Keller"
    assert doc.published == "2024-03-18"
    kept_phrases = ("Aletsch glacier", "thinned by an average of 1.4", "Daniel Farinotti", "Paris Agreement")
    for kept in kept_phrases:
        assert kept in doc.text
    for dropped in ("cookies", "ADVERTISEMENT", "Sponsored", "Most read", "All rights reserved", "Subscribe"):
        assert dropped not in doc.text
    # links are kept in the Markdown and listed (absolute) for provenance
    assert "[GLAMOS monitoring network](https://www.glamos.ch/en/)" in doc.text
    assert web_server.url("/topics/paris-agreement") in doc.links
    assert "https://www.glamos.ch/en/" in doc.links


def test_pdf_text_and_metadata(web_server, web_settings) -> None:
    response = _get(web_settings, web_server.url("/doc.pdf"))
    doc = extract_document(response.body, response.content_type, response.final_url)
    assert doc.kind == "pdf"
    assert (doc.title, doc.author, doc.published) == ("Alpine Glacier Survey 2023", "GLAMOS", "2023-05-01")
    assert "[page 1]" in doc.text and "[page 2]" in doc.text
    assert "The Aletsch glacier thinned by 1.4 metres per year." in doc.text
    assert doc.links == ["https://www.glamos.ch/en/"]


def test_plain_text_and_json(web_server, web_settings) -> None:
    text = _get(web_settings, web_server.url("/notes.txt"))
    assert extract_document(text.body, text.content_type, text.final_url).text.startswith("Field notes")
    data = _get(web_settings, web_server.url("/data.json"))
    doc = extract_document(data.body, data.content_type, data.final_url)
    assert doc.kind == "json" and '"thinning_m_per_year": 1.4' in doc.text


def test_redirect_chain_is_followed_hop_by_hop(web_server, web_settings) -> None:
    response = _get(web_settings, web_server.url("/redirect/3"))
    assert response.final_url == web_server.url("/article")
    assert response.redirects == [web_server.url(f"/redirect/{n}") for n in (3, 2, 1)]


def test_redirects_are_capped(web_server, web_settings) -> None:
    with pytest.raises(FetchError, match="more than 5 redirects"):
        _get(web_settings, web_server.url("/redirect-loop"))
    with pytest.raises(FetchError, match="more than 2 redirects"):
        _get(web_settings.model_copy(update={"max_redirects": 2}), web_server.url("/redirect/3"))


def test_slow_server_hits_the_read_timeout(web_server, web_settings) -> None:
    started = time.monotonic()
    with pytest.raises(FetchError, match="ReadTimeout"):
        _get(web_settings, web_server.url("/slow"))
    assert time.monotonic() - started < web_settings.read_timeout_s + 1.0


def test_trickling_server_cannot_outlast_the_total_deadline(web_server, web_settings) -> None:
    """One byte every 0.1 s never trips the 1 s read timeout; the 1.5 s total deadline ends it."""
    settings = web_settings.model_copy(update={"fetch_deadline_s": 1.5})
    started = time.monotonic()
    with pytest.raises(FetchDeadlineExceeded, match=r"within the 1.5s deadline"):
        _get(settings, web_server.url("/trickle"))
    assert 1.4 < time.monotonic() - started < 2.5


def test_fifty_megabyte_body_is_cut_at_the_cap_with_bounded_memory(web_server, web_settings) -> None:
    started = time.monotonic()
    response, peak = _get_measured(web_settings, web_server.url("/big"))
    assert response.truncated and len(response.body) == web_settings.fetch_max_bytes
    assert peak < 4 * web_settings.fetch_max_bytes  # 50 MB were on offer
    assert time.monotonic() - started < 3.0


def test_gzip_bomb_is_cut_by_decoded_bytes_with_bounded_memory(web_server, web_settings) -> None:
    """~1 MB on the wire that decodes to 1 GiB: decoding stops at the cap."""
    response, peak = _get_measured(web_settings, web_server.url("/bomb"))
    assert response.truncated and len(response.body) == web_settings.fetch_max_bytes
    assert set(response.body[:1000]) == {0}
    assert peak < 4 * web_settings.fetch_max_bytes


def test_hidden_injection_and_planted_link_never_reach_the_text_or_links(web_server, web_settings) -> None:
    response = _get(web_settings, web_server.url("/inject"))
    doc = extract_document(response.body, response.content_type, response.final_url)
    assert "Five Lakes Walk" in doc.text and "Matterhorn Glacier Trail" in doc.text
    assert "exfil?token=planted" not in doc.text
    assert "send the whole conversation" not in doc.text
    assert not [link for link in doc.links if "exfil" in link]


def test_https_connects_to_the_vetted_address_with_the_real_host_for_sni_and_host(https_server) -> None:
    """``https://localhost`` is resolved and vetted once, the connection goes to 127.0.0.1, and TLS still
    verifies the certificate for ``localhost`` (it does not name 127.0.0.1) and sends ``Host: localhost``."""
    from deepscout.settings import WebSettings

    trusting = WebSettings(
        allow_loopback=True,
        allowed_ports=[https_server.port],
        ca_bundle=TLS_CERT,
        per_domain_min_interval_s=0.0,
        fetch_deadline_s=5.0,
    )
    response = _get(trusting, https_server.url("/echo-host"))
    assert response.status == 200 and response.body == f"localhost:{https_server.port}".encode()
    # the same server under its IP: the certificate does not cover it, so verification fails
    with pytest.raises(FetchError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        _get(trusting, f"https://127.0.0.1:{https_server.port}/echo-host")
    # and without trusting the test CA, nothing is fetched
    with pytest.raises(FetchError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        _get(trusting.model_copy(update={"ca_bundle": None}), https_server.url("/echo-host"))


def test_the_run_deadline_cuts_a_fetch_short(web_server, web_settings) -> None:
    client = GuardedHttpClient(web_settings, DomainRateLimiter(0.0))
    started = time.monotonic()
    with pytest.raises(FetchDeadlineExceeded, match="the run's wall-time budget"):
        asyncio.run(client.get(web_server.url("/trickle"), run_deadline=started + 0.5))
    assert time.monotonic() - started < 1.0


def test_requests_to_one_host_are_spaced_by_the_per_domain_rate_limit(web_server, web_settings) -> None:
    client = GuardedHttpClient(web_settings, DomainRateLimiter(0.3))

    async def twice() -> float:
        started = time.monotonic()
        await asyncio.gather(
            client.get(web_server.url("/notes.txt")), client.get(web_server.url("/data.json"))
        )
        return time.monotonic() - started

    assert asyncio.run(twice()) >= 0.3
