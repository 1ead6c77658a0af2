"""Settings for the open-web tools: search backends, fetch limits, guards, quotas and rate limits.

Created by the entry point (CLI, API, tests) with ``WebSettings()`` and handed to the tools through the
tool context; never at import time. Every field can be set from the environment with the
``DEEPSCOUT_WEB_`` prefix, e.g. ``DEEPSCOUT_WEB_FETCH_MAX_BYTES=2000000``; list fields take JSON
(``DEEPSCOUT_WEB_DENY_HOSTS='["example.com"]'``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class WebSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEEPSCOUT_WEB_", extra="ignore")

    # --- search -------------------------------------------------------------------------------------
    text_backends: list[str] = Field(
        default=["duckduckgo", "brave", "mojeek", "wikipedia"],
        description="ddgs text backends, tried in this order (fallback on rate limits and errors).",
    )
    news_backends: list[str] = Field(
        default=["duckduckgo", "yahoo", "bing"], description="ddgs news backends, tried in this order."
    )
    region: str = Field(default="us-en", description="ddgs region, e.g. us-en, uk-en, de-de.")
    safesearch: str = Field(default="moderate", description="ddgs safesearch: on, moderate, off.")
    search_proxy: str | None = Field(
        default=None, description="Proxy for ddgs (http/https/socks5 URL); None means a direct connection."
    )
    search_deadline_s: float = Field(
        default=12.0, gt=0, description="Overall deadline of one search call, retries and fallbacks included."
    )
    search_request_timeout_s: int = Field(
        default=5, ge=1, description="Timeout ddgs gives each of its HTTP requests (whole seconds)."
    )
    search_retries: int = Field(
        default=1, ge=0, description="Retries per backend on rate limits/timeouts, before the next backend."
    )
    search_backoff_s: float = Field(
        default=0.5, ge=0, description="First backoff delay; doubles on each retry (with jitter)."
    )
    search_cache_ttl_s: float = Field(
        default=24 * 3600.0, ge=0, description="How long cached search results are replayed (0: never)."
    )
    search_max_results: int = Field(default=8, ge=1, le=50, description="Results returned per search.")
    corpus_fallback: bool = Field(
        default=True, description="Search the local corpus when the web cannot be searched."
    )

    # --- fetch --------------------------------------------------------------------------------------
    connect_timeout_s: float = Field(default=5.0, gt=0, description="TCP/TLS connect timeout per hop.")
    read_timeout_s: float = Field(default=10.0, gt=0, description="Longest silence between two reads.")
    fetch_deadline_s: float = Field(
        default=20.0, gt=0, description="Total deadline of one fetch: DNS, all hops, and the whole body."
    )
    fetch_max_bytes: int = Field(
        default=10_000_000, ge=1024, description="Cap on the decoded body; the rest is cut, never loaded."
    )
    max_redirects: int = Field(default=5, ge=0, description="Redirect hops followed, each re-checked.")
    ca_bundle: Path | None = Field(
        default=None,
        description="PEM file of the certificate authorities to trust (a corporate CA); None: certifi's.",
    )
    user_agent: str = Field(
        default="deepscout/0.1 (+research agent; reads pages it cites)", description="User-Agent header."
    )
    max_text_chars: int = Field(
        default=2_000_000, ge=1000, description="Cap on the extracted text stored for one page."
    )

    # --- guards -------------------------------------------------------------------------------------
    allow_loopback: bool = Field(
        default=False, description="Allow 127.0.0.0/8 and ::1 (tests only: a local server)."
    )
    allow_private: bool = Field(
        default=False, description="Allow private, link-local and other non-global addresses (intranets)."
    )
    allow_hosts: list[str] = Field(
        default=[],
        description="If non-empty, only these hosts (and their subdomains) may be fetched.",
    )
    deny_hosts: list[str] = Field(default=[], description="Hosts (and their subdomains) never fetched.")
    allowed_ports: list[int] = Field(
        default=[80, 443], description="Ports that may be fetched; tests add the loopback server's port."
    )
    require_provenance: bool = Field(
        default=True,
        description="Fetch only URLs from search results, the user's messages or links of pages read.",
    )
    per_domain_min_interval_s: float = Field(
        default=1.0, ge=0, description="Least time between two requests to the same host."
    )

    # --- quotas per run -----------------------------------------------------------------------------
    max_searches_per_run: int = Field(default=20, ge=0, description="Web searches one run may make.")
    max_fetches_per_run: int = Field(default=30, ge=0, description="Pages one run may fetch from the web.")

    @model_validator(mode="after")
    def _check_consistency(self) -> WebSettings:
        if not self.text_backends:
            raise ValueError("text_backends is empty: name at least one ddgs backend, e.g. ['duckduckgo']")
        if self.safesearch not in {"on", "moderate", "off"}:
            raise ValueError(f"safesearch must be on, moderate or off, not {self.safesearch!r}")
        self.allow_hosts = [h.lower().rstrip(".") for h in self.allow_hosts]
        self.deny_hosts = [h.lower().rstrip(".") for h in self.deny_hosts]
        return self
