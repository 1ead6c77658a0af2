"""Guards for the open web: SSRF checks, URL provenance, and per-domain rate limits.

SSRF: a URL is parsed and checked (scheme, credentials, port, allow/deny lists, numeric IPv4 tricks), its host
is resolved once, every resolved address is vetted, and the caller connects to the vetted address itself (see
``tools/http_client.py``), so a DNS answer cannot change between the check and the connection.

Provenance: the agent may fetch only URLs that came from search results, the user's messages, or hyperlinks of
pages it has read; a URL the model composed (the way an injected page exfiltrates data) is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from deepscout.errors import DeepscoutError
from deepscout.redaction import redact_url
from deepscout.settings import WebSettings
from deepscout.tools.address_ranges import (
    IPV4_COMPATIBLE,
    IPV4_MAPPED,
    NAT64_WELL_KNOWN,
    SIX_TO_FOUR,
    IPAddress,
    denied_range,
)

UrlOrigin = Literal["search", "user", "page"]


class UrlRefusedError(DeepscoutError, ValueError):
    """A URL the web tools will not fetch; the message says why and what would allow it."""


class UnsafeUrlError(UrlRefusedError):
    """The URL points at an address or port the machine must not reach (SSRF guard)."""


class UnseenUrlError(UrlRefusedError):
    """The URL did not come from a search result, the user's messages or a link of a page read."""


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed the static checks; ``host`` is lower-case, IDNA-encoded, without brackets."""

    url: str
    scheme: str
    host: str
    port: int


def normalize_url(url: str) -> str:
    """Canonical form used for provenance and cache keys: lower-case scheme and host, no fragment,
    no default port, ``/`` for an empty path. Raises ``UnsafeUrlError`` (a ``ValueError``) for a URL that
    cannot be parsed (``http://[oops/``): callers skip such a link rather than lose the page."""
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").rstrip(".")
    except ValueError as exc:
        raise UnsafeUrlError(f"malformed URL {redact_url(url)!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    with contextlib.suppress(UnicodeError):  # left as is; check_url refuses it with a clear message
        host = host.encode("idna").decode("ascii") if host and not _is_ip_literal(host) else host
    netloc = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None and port != {"http": 80, "https": 443}.get(scheme):
        netloc = f"{netloc}:{port}"
    if parts.username or parts.password:
        userinfo = parts.username or ""
        if parts.password:
            userinfo += f":{parts.password}"
        netloc = f"{userinfo}@{netloc}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address a host name denotes under inet_aton's lax rules (decimal, octal, hex, 1-4 parts), or None
    when the name is not all-numeric. ``2130706433``, ``0x7f.1`` and ``0177.0.0.1`` all mean 127.0.0.1."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        if re.fullmatch(r"0[xX][0-9a-fA-F]*", part):
            values.append(int(part[2:] or "0", 16))
        elif re.fullmatch(r"0[0-7]+", part):
            values.append(int(part, 8))
        elif re.fullmatch(r"[0-9]+", part):
            values.append(int(part, 10))
        else:
            return None
    *leading, last = values
    if any(v > 255 for v in leading) or last >= 256 ** (4 - len(leading)):
        return None
    number = 0
    for v in leading:
        number = number * 256 + v
    number = (number << (8 * (4 - len(leading)))) | last
    return ipaddress.IPv4Address(number)


def _host_matches(host: str, patterns: Iterable[str]) -> bool:
    return any(host == p or host.endswith("." + p) for p in patterns)


def check_url(url: str, settings: WebSettings) -> CheckedUrl:
    """Static checks, before any DNS: scheme, credentials, host form, port, allow/deny lists.

    Raises ``UnsafeUrlError`` naming the reason (credentials in the URL are masked in the message)."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url.strip())
        port_value = parts.port
    except ValueError as exc:
        raise UnsafeUrlError(f"malformed URL {shown!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"}:
        raise UnsafeUrlError(
            f"refused {shown!r}: only http and https URLs are fetched, not {scheme or 'none'!r}"
        )
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrlError(f"refused {shown!r}: URLs with embedded credentials (user@host) are not fetched")
    raw_host = (parts.hostname or "").rstrip(".")
    if not raw_host:
        raise UnsafeUrlError(f"refused {shown!r}: the URL has no host")
    if "%" in raw_host:
        raise UnsafeUrlError(f"refused {shown!r}: IPv6 zone identifiers are not fetched")
    if _is_ip_literal(raw_host):
        host = raw_host
        if isinstance(ipaddress.ip_address(raw_host), ipaddress.IPv4Address) and (
            str(ipaddress.ip_address(raw_host)) != raw_host
        ):
            raise UnsafeUrlError(f"refused {shown!r}: non-canonical IPv4 address {raw_host!r}")
    else:
        numeric = _numeric_ipv4(raw_host)
        if numeric is not None:
            raise UnsafeUrlError(
                f"refused {shown!r}: numeric host {raw_host!r} is a disguised IPv4 address ({numeric}); "
                "write addresses in dotted-decimal form"
            )
        try:
            host = raw_host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise UnsafeUrlError(f"refused {shown!r}: host {raw_host!r} is not a valid domain name") from exc
    port = port_value if port_value is not None else (443 if scheme == "https" else 80)
    if port not in settings.allowed_ports:
        raise UnsafeUrlError(
            f"refused {shown!r}: port {port} is not in allowed_ports {settings.allowed_ports} "
            "(DEEPSCOUT_WEB_ALLOWED_PORTS)"
        )
    if _host_matches(host, settings.deny_hosts):
        raise UnsafeUrlError(
            f"refused {shown!r}: host {host!r} is on the deny list (DEEPSCOUT_WEB_DENY_HOSTS)"
        )
    if settings.allow_hosts and not _host_matches(host, settings.allow_hosts):
        raise UnsafeUrlError(
            f"refused {shown!r}: host {host!r} is not on the allow list (DEEPSCOUT_WEB_ALLOW_HOSTS)"
        )
    return CheckedUrl(url=url, scheme=scheme, host=host, port=port)


def vet_address(address: IPAddress, settings: WebSettings) -> None:
    """Raise ``UnsafeUrlError`` unless ``address`` is one the machine may connect to (the explicit table of
    ``tools/address_ranges.py``; IPv4 addresses inside IPv6 forms are unwrapped and vetted too)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in IPV4_MAPPED or (address in IPV4_COMPATIBLE and int(address) > 1):
            # ::ffff:a.b.c.d and the deprecated ::a.b.c.d
            raise UnsafeUrlError(f"address {address} is an IPv4 address in IPv6 form")
        embedded = address.sixtofour if address in SIX_TO_FOUR else None
        if address in NAT64_WELL_KNOWN:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            try:
                vet_address(embedded, settings)
            except UnsafeUrlError as exc:
                raise UnsafeUrlError(f"address {address} embeds {exc}") from exc
            if address in NAT64_WELL_KNOWN:
                return
    denied = denied_range(address)
    if denied is None:
        return
    if denied.kind == "unspecified":
        raise UnsafeUrlError(f"address {address} is unspecified ('this host', {denied.name})")
    if denied.kind == "multicast":
        raise UnsafeUrlError(f"address {address} is multicast ({denied.name})")
    if denied.kind == "metadata":
        raise UnsafeUrlError(f"address {address} is a {denied.name}")
    if denied.kind == "loopback":
        if settings.allow_loopback:
            return
        raise UnsafeUrlError(
            f"address {address} is loopback (DEEPSCOUT_WEB_ALLOW_LOOPBACK=true allows it, for tests)"
        )
    if settings.allow_private:
        return
    what = "link-local" if denied.kind == "link-local" else "private or reserved"
    raise UnsafeUrlError(
        f"address {address} is {what}: {denied.name} (DEEPSCOUT_WEB_ALLOW_PRIVATE=true allows it)"
    )


async def resolve_and_vet(target: CheckedUrl, settings: WebSettings) -> IPAddress:
    """Resolve the host once, vet every address it resolves to, and return the one to connect to.

    Any bad address in the answer refuses the whole host (a name mixing public and private answers is an
    attack on the resolver). Timeouts are the caller's: wrap this in the fetch deadline."""
    if _is_ip_literal(target.host):
        address = ipaddress.ip_address(target.host)
        try:
            vet_address(address, settings)
        except UnsafeUrlError as exc:
            raise UnsafeUrlError(f"refused {target.url!r}: {exc}") from exc
        return address
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UrlRefusedError(f"cannot resolve host {target.host!r}: {exc.strerror}") from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UrlRefusedError(f"host {target.host!r} resolved to no address")
    for address in addresses:
        try:
            vet_address(address, settings)
        except UnsafeUrlError as exc:
            raise UnsafeUrlError(f"refused {target.url!r}: host {target.host!r} resolves to {exc}") from exc
    return addresses[0]


_URL_IN_TEXT = re.compile(r"https?://[^\s<>\"'`{}|\\^\[\]]+", re.IGNORECASE)


class UrlProvenance:
    """The URLs the agent may fetch in one run, with where each came from."""

    def __init__(self) -> None:
        self._origins: dict[str, UrlOrigin] = {}

    def add(self, url: str, origin: UrlOrigin) -> None:
        """Record ``url``; a malformed URL is skipped (it could never be fetched)."""
        with contextlib.suppress(UnsafeUrlError):
            self._origins.setdefault(normalize_url(url), origin)

    def add_many(self, urls: Iterable[str], origin: UrlOrigin) -> None:
        for url in urls:
            self.add(url, origin)

    def add_from_user_text(self, text: str) -> list[str]:
        """Record the URLs written in a user's message; returns them."""
        urls = [m.rstrip(".,;:!?)") for m in _URL_IN_TEXT.findall(text)]
        self.add_many(urls, "user")
        return urls

    def origin_of(self, url: str) -> UrlOrigin | None:
        try:
            return self._origins.get(normalize_url(url))
        except UnsafeUrlError:
            return None

    def require(self, url: str) -> UrlOrigin:
        """The origin of ``url``; raises ``UnseenUrlError`` for a URL from nowhere."""
        origin = self.origin_of(url)
        if origin is None:
            raise UnseenUrlError(
                f"refused {url!r}: this URL did not appear in search results, the user's messages, or a link "
                "of a page already read. Only such URLs may be fetched; search for the page instead."
            )
        return origin

    def __len__(self) -> int:
        return len(self._origins)


class DomainRateLimiter:
    """At most one request per host every ``min_interval_s`` seconds, shared by all fetches of a run."""

    def __init__(self, min_interval_s: float) -> None:
        self._min_interval_s = min_interval_s
        self._next_slot: dict[str, float] = {}
        self._lock = threading.Lock()  # not asyncio.Lock: sync tool calls run each fetch in a fresh loop

    async def acquire(self, host: str, deadline: float) -> None:
        """Wait for the host's next slot; raises ``TimeoutError`` if it comes after ``deadline``
        (a ``time.monotonic()`` value)."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot.get(host, now))
            if slot > deadline:
                raise TimeoutError(
                    f"rate limit for {host}: next request allowed in {slot - now:.1f}s, after the deadline"
                )
            self._next_slot[host] = slot + self._min_interval_s
        if slot > now:
            await asyncio.sleep(slot - now)
