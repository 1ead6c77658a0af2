"""A guarded HTTP GET for untrusted URLs: pinned addresses, capped bytes, capped redirects, one deadline.

Every hop (the first URL and each redirect target) is checked by ``tools/guards.py``, resolved once, and
the connection goes to the vetted address itself: the request URL carries the IP literal while the
``Host`` header and the TLS server name (httpx's ``sni_hostname`` extension) carry the real host, so the
certificate is still verified for that host and no second DNS lookup happens.

The body is read raw and decoded here, with zlib's ``max_length``, so a decompression bomb produces at most
``fetch_max_bytes`` decoded bytes before it is cut. ``asyncio.timeout`` bounds the whole fetch (DNS, all
hops, the body), so a server trickling one byte a second cannot outlast the deadline.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from dataclasses import dataclass, field
from urllib.parse import urljoin

import httpx

from deepscout.errors import DeepscoutError
from deepscout.settings import WebSettings
from deepscout.tools.guards import DomainRateLimiter, UnsafeUrlError, check_url, resolve_and_vet

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DECODE_STEP = 1 << 18  # decoded bytes produced per zlib call: bounds memory per step


class FetchError(DeepscoutError, RuntimeError):
    """A fetch that failed on the network or broke a limit; the message names the URL and the reason."""


class FetchDeadlineExceeded(FetchError, TimeoutError):
    """The whole fetch did not finish within ``fetch_deadline_s``."""


@dataclass
class RawResponse:
    requested_url: str
    final_url: str
    status: int
    content_type: str
    body: bytes = field(repr=False)  # asyncio's debug logging reprs task results: keep megabytes out of it
    truncated: bool = False
    redirects: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class _BoundedDecoder:
    """Content-Encoding decoding that never produces more than asked for in one step."""

    def __init__(self, content_encoding: str, url: str) -> None:
        encoding = content_encoding.strip().lower()
        if encoding in {"", "identity"}:
            self._zlib = None
        elif encoding in {"gzip", "x-gzip", "deflate"}:
            self._zlib = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header, detected
        else:
            raise FetchError(
                f"{url}: unsupported Content-Encoding {content_encoding!r} (asked for gzip/deflate)"
            )
        self._url = url

    def decode(self, data: bytes, max_length: int) -> tuple[bytes, bytes]:
        """Decode up to ``max_length`` (>= 1) bytes from ``data``; returns (decoded, input left over)."""
        if self._zlib is None:
            return data[:max_length], data[max_length:]
        try:
            out = self._zlib.decompress(data, max_length)
        except zlib.error as exc:
            raise FetchError(f"{self._url}: corrupt compressed body ({exc})") from exc
        return out, self._zlib.unconsumed_tail


async def _read_capped(response: httpx.Response, cap: int, url: str) -> tuple[bytes, bool]:
    decoder = _BoundedDecoder(response.headers.get("content-encoding", ""), url)
    body = bytearray()
    async for raw in response.aiter_raw():
        data = raw
        while data:
            room = cap - len(body)
            out, data = decoder.decode(data, min(room + 1, _DECODE_STEP))  # one byte over the cap detects it
            if len(out) > room:
                body += out[:room]
                return bytes(body), True
            body += out
    return bytes(body), False


class GuardedHttpClient:
    """GET untrusted URLs under the SSRF guards and limits of ``WebSettings``."""

    def __init__(self, settings: WebSettings, rate_limiter: DomainRateLimiter) -> None:
        self._settings = settings
        self._rate_limiter = rate_limiter
        # built once: loading the CA bundle costs ~60 ms, more than a whole fetch over a fast link
        self._ssl_context = (
            ssl.create_default_context(cafile=str(settings.ca_bundle))
            if settings.ca_bundle is not None
            else httpx.create_ssl_context(trust_env=False)
        )

    async def get(self, url: str, *, run_deadline: float | None = None) -> RawResponse:
        """Fetch ``url`` within ``fetch_deadline_s`` and before ``run_deadline`` (a ``time.monotonic()``
        value) if given; raises ``UrlRefusedError`` (guards), ``FetchDeadlineExceeded`` or ``FetchError``."""
        s = self._settings
        started = time.monotonic()
        deadline = started + s.fetch_deadline_s
        why = f"the {s.fetch_deadline_s:g}s deadline (DEEPSCOUT_WEB_FETCH_DEADLINE_S)"
        if run_deadline is not None and run_deadline < deadline:
            deadline, why = run_deadline, "the run's wall-time budget"
        try:
            async with asyncio.timeout(max(0.0, deadline - started)):
                return await self._get(url, deadline, started)
        except TimeoutError as exc:
            if isinstance(exc, FetchError):
                raise
            raise FetchDeadlineExceeded(f"{url}: fetch did not finish within {why}") from exc

    async def _get(self, url: str, deadline: float, started: float) -> RawResponse:
        s = self._settings
        timeout = httpx.Timeout(connect=s.connect_timeout_s, read=s.read_timeout_s, write=10.0, pool=5.0)
        headers = {"User-Agent": s.user_agent, "Accept-Encoding": "gzip, deflate", "Accept": "*/*"}
        redirects: list[str] = []
        current = url
        async with httpx.AsyncClient(
            trust_env=False, timeout=timeout, follow_redirects=False, verify=self._ssl_context
        ) as client:
            while True:
                target = check_url(current, s)
                address = await resolve_and_vet(target, s)
                try:
                    await self._rate_limiter.acquire(target.host, deadline)
                except TimeoutError as exc:
                    raise FetchError(f"{current}: {exc}") from exc
                try:
                    logical = httpx.URL(current)
                except httpx.InvalidURL as exc:
                    raise UnsafeUrlError(f"refused {current!r}: malformed URL ({exc})") from exc
                host_name = f"[{target.host}]" if ":" in target.host else target.host  # IPv6 literal
                host_header = host_name if logical.port is None else f"{host_name}:{logical.port}"
                request = client.build_request(
                    "GET",
                    logical.copy_with(host=str(address)),
                    headers={**headers, "Host": host_header},
                    extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
                )
                try:
                    response = await client.send(request, stream=True)
                except httpx.TimeoutException as exc:
                    raise FetchError(
                        f"{current}: {type(exc).__name__}: no answer within the connect/read timeouts "
                        f"({s.connect_timeout_s:g}s/{s.read_timeout_s:g}s)"
                    ) from exc
                except httpx.HTTPError as exc:
                    raise FetchError(f"{current}: {type(exc).__name__}: {exc}") from exc
                try:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECT_STATUSES and location:
                        if len(redirects) >= s.max_redirects:
                            raise FetchError(
                                f"{url}: more than {s.max_redirects} redirects (DEEPSCOUT_WEB_MAX_REDIRECTS)"
                            )
                        redirects.append(current)
                        current = urljoin(current, location)
                        continue
                    try:
                        body, truncated = await _read_capped(response, s.fetch_max_bytes, current)
                    except httpx.TimeoutException as exc:
                        raise FetchError(
                            f"{current}: {type(exc).__name__}: the body stalled over {s.read_timeout_s:g}s"
                        ) from exc
                    except httpx.HTTPError as exc:
                        raise FetchError(f"{current}: {type(exc).__name__}: {exc}") from exc
                    return RawResponse(
                        requested_url=url,
                        final_url=current,
                        status=response.status_code,
                        content_type=response.headers.get("content-type", ""),
                        body=body,
                        truncated=truncated,
                        redirects=redirects,
                        elapsed_s=time.monotonic() - started,
                        headers={k.lower(): v for k, v in response.headers.items()},
                    )
                finally:
                    await response.aclose()
