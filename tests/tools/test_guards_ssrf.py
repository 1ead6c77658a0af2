"""SSRF guards: every address class, numeric tricks, schemes, ports, lists, and a redirect to loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import time

import pytest

from deepscout.settings import WebSettings
from deepscout.tools.guards import (
    DomainRateLimiter,
    UnsafeUrlError,
    UnseenUrlError,
    UrlProvenance,
    check_url,
    normalize_url,
    resolve_and_vet,
    vet_address,
)
from deepscout.tools.http_client import GuardedHttpClient

STRICT = WebSettings()  # the defaults: no loopback, no private addresses, ports 80 and 443

REFUSED_ADDRESSES = {
    "loopback v4": "127.0.0.1",
    "loopback v4 elsewhere in 127/8": "127.45.6.7",
    "loopback v6": "::1",
    "private 10/8": "10.1.2.3",
    "private 172.16/12": "172.20.0.5",
    "private 192.168/16": "192.168.1.1",
    "carrier-grade NAT": "100.64.0.1",
    "unique local v6": "fd12:3456::1",
    "link-local v4": "169.254.10.20",
    "link-local v6": "fe80::1",
    "multicast v4": "224.0.0.251",
    "multicast v6": "ff02::1",
    "unspecified v4": "0.0.0.0",
    "this-network 0/8": "0.1.2.3",
    "unspecified v6": "::",
    "IPv4-mapped IPv6 loopback": "::ffff:127.0.0.1",
    "IPv4-mapped IPv6 public": "::ffff:8.8.8.8",
    "metadata AWS/GCP/Azure": "169.254.169.254",
    "metadata Alibaba": "100.100.100.200",
    "metadata AWS v6": "fd00:ec2::254",
    "6to4 wrapping loopback": "2002:7f00:1::1",
    "NAT64 wrapping private": "64:ff9b::a00:1",
    "broadcast": "255.255.255.255",
    "documentation range": "192.0.2.10",
    "local-use NAT64 64:ff9b:1::/48": "64:ff9b:1::a00:1",
    "IPv4-translated (SIIT) loopback": "::ffff:0:7f00:1",
    "IPv4-translated (SIIT) public": "::ffff:0:808:808",
    "IETF protocol assignment 192.0.0.8": "192.0.0.8",
    "NAT64 discovery 192.0.0.170": "192.0.0.170",
    "Teredo": "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "benchmarking 198.18/15": "198.19.0.1",
    "reserved 240/4": "240.0.0.1",
    "discard-only 100::/64": "100::1",
    "documentation v6": "2001:db8::1",
    "site-local v6": "fec0::1",
    "outside 2000::/3": "4000::1",
}


@pytest.mark.parametrize("address", REFUSED_ADDRESSES.values(), ids=REFUSED_ADDRESSES.keys())
def test_every_non_public_address_class_is_refused(address: str) -> None:
    with pytest.raises(UnsafeUrlError, match=f"address {ipaddress.ip_address(address)} (is|embeds) "):
        vet_address(ipaddress.ip_address(address), STRICT)


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "1.1.1.1"])
def test_public_addresses_pass(address: str) -> None:
    vet_address(ipaddress.ip_address(address), STRICT)


def test_the_deny_table_decides_not_ipaddress(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python's ``is_global`` is never asked: with it claiming every address is global, the table still
    refuses the ranges it holds (``[::ffff:0:7f00:1]``, the SIIT form of 127.0.0.1, among them)."""
    monkeypatch.setattr(ipaddress.IPv4Address, "is_global", property(lambda self: True))
    monkeypatch.setattr(ipaddress.IPv6Address, "is_global", property(lambda self: True))
    for address in ("::ffff:0:7f00:1", "64:ff9b:1::1", "192.0.0.8", "10.0.0.1"):
        with pytest.raises(UnsafeUrlError):
            vet_address(ipaddress.ip_address(address), STRICT)
    with pytest.raises(UnsafeUrlError, match=r"IPv4-translated"):
        asyncio.run(GuardedHttpClient(STRICT, DomainRateLimiter(0.0)).get("http://[::ffff:0:7f00:1]/"))


def test_credentials_in_a_refused_url_are_not_echoed() -> None:
    with pytest.raises(UnsafeUrlError) as refusal:
        check_url("http://admin:hunter2secret@example.com/", STRICT)
    assert "hunter2secret" not in str(refusal.value) and "***@example.com" in str(refusal.value)


def test_metadata_and_multicast_stay_refused_even_when_private_and_loopback_are_allowed() -> None:
    lenient = WebSettings(allow_private=True, allow_loopback=True)
    vet_address(ipaddress.ip_address("10.0.0.1"), lenient)
    vet_address(ipaddress.ip_address("127.0.0.1"), lenient)
    for address in ("169.254.169.254", "224.0.0.1", "0.0.0.0", "::ffff:10.0.0.1"):
        with pytest.raises(UnsafeUrlError):
            vet_address(ipaddress.ip_address(address), lenient)


NUMERIC_TRICKS = {
    "decimal": "http://2130706433/",
    "hex": "http://0x7f000001/",
    "octal": "http://017700000001/",
    "dotted octal": "http://0177.0.0.1/",
    "dotted hex": "http://0x7f.0x0.0x0.0x1/",
    "short form": "http://127.1/",
    "mixed short": "http://0x7f.1/",
    "leading zeros": "http://127.000.000.001/",
    "decimal metadata": "http://2852039166/latest/meta-data/",
}


@pytest.mark.parametrize("url", NUMERIC_TRICKS.values(), ids=NUMERIC_TRICKS.keys())
def test_numeric_ipv4_tricks_are_refused_before_any_lookup(url: str) -> None:
    with pytest.raises(UnsafeUrlError, match="IPv4"):
        check_url(url, STRICT)


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/x", "gopher://example.com/", "javascript:alert(1)", "data:,x"],
)
def test_non_http_schemes_are_refused(url: str) -> None:
    with pytest.raises(UnsafeUrlError, match="only http and https"):
        check_url(url, STRICT)


def test_credentials_ports_and_lists() -> None:
    with pytest.raises(UnsafeUrlError, match="credentials"):
        check_url("http://user:pw@example.com/", STRICT)
    with pytest.raises(UnsafeUrlError, match="port 22"):
        check_url("http://example.com:22/", STRICT)
    with pytest.raises(UnsafeUrlError, match="deny list"):
        check_url("https://ads.tracker.example/x", WebSettings(deny_hosts=["tracker.example"]))
    with pytest.raises(UnsafeUrlError, match="allow list"):
        check_url("https://other.example/", WebSettings(allow_hosts=["wiki.example"]))
    only_wiki = WebSettings(allow_hosts=["wiki.example"])
    assert check_url("https://en.wiki.example/a", only_wiki).host == "en.wiki.example"
    assert check_url("https://Example.COM./a", STRICT).host == "example.com"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://0.0.0.0/",
        "http://[::]/",
        "http://localhost/",
        "http://localhost./admin",
    ],
)
def test_the_client_refuses_internal_targets_with_a_clear_error(url: str) -> None:
    client = GuardedHttpClient(STRICT, DomainRateLimiter(0.0))
    reasons = r"refused .*(loopback|private|metadata|unspecified|IPv4 address)"
    with pytest.raises(UnsafeUrlError, match=reasons):
        asyncio.run(client.get(url))


def test_a_name_resolving_to_loopback_is_refused_after_one_resolution() -> None:
    target = check_url("http://localhost/", STRICT)
    with pytest.raises(UnsafeUrlError, match=r"resolves to address .* loopback"):
        asyncio.run(resolve_and_vet(target, STRICT))
    allowed = WebSettings(allow_loopback=True)
    assert asyncio.run(resolve_and_vet(check_url("http://localhost/", allowed), allowed)).is_loopback


def test_redirect_to_loopback_is_refused_when_loopback_is_not_allowed(lan_web_server, web_server) -> None:
    """The first hop (this machine's LAN address, allowed as private) answers 302 → 127.0.0.1; the guard
    re-checks the hop and refuses it, so the loopback server is never reached."""
    settings = WebSettings(
        allow_private=True,
        allow_loopback=False,
        allowed_ports=[lan_web_server.port, web_server.port],
        per_domain_min_interval_s=0.0,
    )
    client = GuardedHttpClient(settings, DomainRateLimiter(0.0))
    before = web_server.hits["/article"]
    target = web_server.url("/article")
    refusal = r"refused 'http://127\.0\.0\.1:\d+/article': address 127\.0\.0\.1 is loopback"
    with pytest.raises(UnsafeUrlError, match=refusal):
        asyncio.run(client.get(lan_web_server.url(f"/redirect-to?url={target}")))
    assert lan_web_server.hits["/redirect-to"] >= 1
    assert web_server.hits["/article"] == before
    # the same first hop without the redirect is fetched: the refusal was the redirect's
    assert asyncio.run(client.get(lan_web_server.url("/notes.txt"))).status == 200


def test_provenance_admits_only_seen_urls() -> None:
    provenance = UrlProvenance()
    provenance.add("https://Example.com:443/a#section", "search")
    urls = provenance.add_from_user_text("Please read https://docs.example/guide?x=1, thanks.")
    assert urls == ["https://docs.example/guide?x=1"]
    assert provenance.require("https://example.com/a") == "search"
    assert provenance.require("https://docs.example/guide?x=1") == "user"
    with pytest.raises(UnseenUrlError, match="did not appear in search results"):
        provenance.require("https://example.com/a?leak=secret")
    assert normalize_url("HTTP://Example.com:80") == "http://example.com/"


def test_rate_limiter_spaces_requests_to_one_host_and_refuses_past_the_deadline() -> None:
    limiter = DomainRateLimiter(0.2)

    async def three() -> list[float]:
        stamps = []
        for _ in range(3):
            await limiter.acquire("a.example", time.monotonic() + 5)
            stamps.append(time.monotonic())
        await limiter.acquire("b.example", time.monotonic() + 5)  # other host: no wait
        stamps.append(time.monotonic())
        return stamps

    stamps = asyncio.run(three())
    assert stamps[1] - stamps[0] >= 0.18 and stamps[2] - stamps[1] >= 0.18
    assert stamps[3] - stamps[2] < 0.1
    with pytest.raises(TimeoutError, match="rate limit"):
        asyncio.run(limiter.acquire("a.example", time.monotonic() + 0.01))


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/iam/", "cloud metadata"),
        ("http://10.0.0.1/admin", "private or reserved"),
        ("http://[::ffff:10.0.0.1]/", "IPv4 address in IPv6 form"),
        ("http://2130706433/", "disguised IPv4"),
        ("file:///etc/passwd", "only http and https"),
        ("http://127.0.0.1:22/", "port 22 is not in allowed_ports"),
    ],
)
def test_every_redirect_hop_is_rechecked(web_server, web_settings, target: str, reason: str) -> None:
    """From the allowed loopback server, a redirect to an internal target is refused before connecting."""
    client = GuardedHttpClient(web_settings, DomainRateLimiter(0.0))
    with pytest.raises(UnsafeUrlError, match=reason):
        asyncio.run(client.get(web_server.url(f"/redirect-to?url={target}")))


def test_the_name_is_resolved_once_and_the_connection_goes_to_the_vetted_address(
    web_server, web_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rebind.test`` exists only in a patched resolver that answers 127.0.0.1 once and a public address
    after that (DNS rebinding). The fetch works, sends ``Host: rebind.test``, and asks the resolver once:
    the connection went to the address that was vetted, not to a second answer."""
    import socket
    from asyncio import base_events

    asked: list[str] = []
    original = base_events.BaseEventLoop.getaddrinfo

    async def resolver(self, host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host != "rebind.test":
            return await original(self, host, port, *args, **kwargs)  # IP literals, for the connect
        asked.append(host)
        address = "127.0.0.1" if len(asked) == 1 else "93.184.215.14"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    monkeypatch.setattr(base_events.BaseEventLoop, "getaddrinfo", resolver)
    client = GuardedHttpClient(web_settings, DomainRateLimiter(0.0))
    response = asyncio.run(client.get(f"http://rebind.test:{web_server.port}/echo-host"))
    assert response.body == f"rebind.test:{web_server.port}".encode()
    assert asked == ["rebind.test"]


def test_a_malformed_url_is_refused_with_a_clear_error(web_server, web_settings) -> None:
    client = GuardedHttpClient(web_settings, DomainRateLimiter(0.0))
    with pytest.raises(UnsafeUrlError, match="malformed URL"):
        asyncio.run(client.get(web_server.url("/article\x00")))
    with pytest.raises(UnsafeUrlError, match="malformed URL"):
        check_url("http://[::1/", STRICT)
