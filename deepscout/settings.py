"""Settings shared by every part of deepscout, built once by the entry point and passed down.

``Settings()`` reads the environment: its own fields from ``DEEPSCOUT_*`` (e.g. ``DEEPSCOUT_HOME``) and
one section per part — ``web`` (``DEEPSCOUT_WEB_*``), ``openai`` (``DEEPSCOUT_OPENAI_*``), ``v4``
(``DEEPSCOUT_V4_*``), ``hf`` (``DEEPSCOUT_HF_*``) and ``server`` (``DEEPSCOUT_SERVER_*``). Only entry
points (the CLI, a server, tests, benchmarks) create it; nothing below them reads the environment or
builds settings of its own (a test enforces this).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path(platformdirs.user_data_dir("deepscout", appauthor=False))


def _default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("deepscout", appauthor=False))


class WebSettings(BaseSettings):
    """The open-web tools: search backends, fetch limits, guards, quotas and rate limits (``DEEPSCOUT_WEB_*``;
    list fields take JSON, e.g. ``DEEPSCOUT_WEB_DENY_HOSTS='["example.com"]'``)."""

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
    searxng_url: str | None = Field(
        default=None,
        description="A self-hosted SearxNG (JSON format enabled), asked after the ddgs backends fail.",
    )
    brave_api_key: SecretStr | None = Field(
        default=None, description="Brave Search API key; Brave's API is asked last in the fail-over chain."
    )
    brave_api_url: str = Field(
        default="https://api.search.brave.com/res/v1", description="Brave Search API base URL."
    )
    keep_queries_local: bool = Field(
        default=False,
        description="Never send queries to third-party search engines (ddgs, Brave): only to searxng_url.",
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
    extract_deadline_s: float = Field(
        default=10.0, gt=0, description="Time one page's text extraction may take; its worker is then killed."
    )
    extract_memory_mb: int = Field(
        default=512, ge=128, description="Address-space cap (MiB) of each extraction worker process."
    )
    extract_workers: int = Field(default=2, ge=1, le=16, description="Extraction worker processes per run.")

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


class OpenAISettings(BaseSettings):
    """Where the OpenAI-compatible server is and how to talk to it (env prefix ``DEEPSCOUT_OPENAI_``)."""

    model_config = SettingsConfigDict(env_prefix="DEEPSCOUT_OPENAI_", extra="ignore")

    base_url: str = Field(
        default="https://api.deepseek.com", description="Server URL (…/v1 for vLLM/SGLang)."
    )
    api_key: SecretStr = Field(default=SecretStr("EMPTY"), description="Bearer key; local servers ignore it.")
    thinking: bool | None = Field(
        default=None,
        description="Thinking mode on/off; unset leaves the server's default (on for DeepSeek-V4).",
    )
    reasoning_effort: str | None = Field(default=None, description="e.g. high or max (DeepSeek).")
    timeout_s: float = Field(default=600.0, description="Per-request timeout when no deadline is given.")
    max_retries: int = Field(default=2, description="Client retries on connection errors and 5xx/429.")
    context_window: int | None = Field(default=None, description="Override the model's context window.")
    max_tokens: int | None = Field(default=None, description="Completion token cap sent with each request.")


class V4Settings(BaseSettings):
    """How the embedded V4 runtime runs and how much KV it holds (``DEEPSCOUT_V4_*``).

    The engine's KV pool is sized from these once, when the runtime starts; every run on that runtime
    is checked against what it can hold."""

    model_config = SettingsConfigDict(env_prefix="DEEPSCOUT_V4_", extra="ignore")

    thinking: bool = Field(default=False, description="Thinking mode (<think>) instead of chat mode.")
    reasoning_effort: Literal["high", "max"] | None = Field(
        default=None, description="'max' is Think Max (needs thinking and a context of at least 384K)."
    )
    max_new_tokens: int = Field(default=512, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, description="0 decodes greedily.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    dtype: Literal["float32", "bfloat16"] = Field(default="float32", description="Weights dtype.")
    kv_dtype: Literal["float32", "bfloat16", "paper"] = Field(
        default="float32", description="KV storage: float32, bfloat16, or the paper's FP8/FP4 layout."
    )
    context_window: int | None = Field(default=None, ge=1, description="Override config.json's window.")
    kv_blocks: int | None = Field(
        default=None, ge=1, description="Paged KV blocks (128 tokens each); default: two full contexts."
    )
    structured_retries: int = Field(default=2, ge=0, description="Retries after invalid output, sampled.")
    max_sequences: int = Field(
        default=8, ge=1, description="Sequences decoded together in one engine step; more calls wait."
    )
    device: str = Field(
        default="cpu",
        pattern=r"^(cpu|cuda(:\d+)?)(,(cpu|cuda(:\d+)?))*$",
        description=(
            "Where the model and its KV live: cpu, cuda or cuda:N (CUDA runs the fused kernels); several, "
            "comma-separated (cuda:0,cuda:1), run a checkpoint expert-parallel, one process per device."
        ),
    )
    prefill_chunk: int = Field(
        default=512, ge=1, description="Prompt tokens of one sequence per engine step."
    )
    weights: Literal["dense", "shipped"] = Field(
        default="dense",
        description="A checkpoint's FP8/MXFP4 weights dequantised (dense) or kept as shipped.",
    )
    speculative: Literal["off", "mtp"] = Field(
        default="off",
        description="mtp: speculative decoding, the MTP layer drafts and the model verifies (same tokens).",
    )
    moe_sharding: Literal["units", "experts"] = Field(
        default="units",
        description=(
            "Over several devices, how they share the routed experts: units (each holds its share of every "
            "expert, so each reads the same bytes a step) or experts (each holds whole experts)."
        ),
    )

    @property
    def devices(self) -> tuple[str, ...]:
        """`device` as one device per rank (one entry: a single process)."""
        return tuple(self.device.split(","))


class HFSettings(BaseSettings):
    """How the embedded Hugging Face models (SmolLM2, ``hf:PATH``) batch and keep KV (``DEEPSCOUT_HF_*``)."""

    model_config = SettingsConfigDict(env_prefix="DEEPSCOUT_HF_", extra="ignore")

    max_sequences: int = Field(default=8, ge=1, description="Calls decoded together in one batched step.")
    max_sessions: int | None = Field(
        default=None,
        ge=1,
        description="Idle KV sessions kept for later turns and shared prefixes; None: 2 × max_sequences.",
    )
    session_memory_mb: int | None = Field(
        default=None,
        ge=0,
        description="Memory for idle KV sessions (oldest out first); None: 192 MiB × max_sequences.",
    )


class ServerSettings(BaseSettings):
    """The HTTP server of ``deepscout serve`` (``DEEPSCOUT_SERVER_*``; list fields take JSON, e.g.
    ``DEEPSCOUT_SERVER_API_TOKENS='["s3cret"]'``)."""

    model_config = SettingsConfigDict(env_prefix="DEEPSCOUT_SERVER_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address to bind; without api_tokens only loopback.")
    port: int = Field(default=8765, ge=0, le=65535, description="TCP port (0: any free port).")
    models: list[str] = Field(
        default=[],
        description="Chat model specs the server may load and name; empty: Settings.model only. A request "
        "naming anything else is refused.",
    )
    api_tokens: list[SecretStr] = Field(
        default=[], description="Bearer tokens accepted; each token sees only the threads it created."
    )
    rate_limit_per_minute: int = Field(
        default=120, ge=1, description="Requests one token (or the anonymous client) may make per minute."
    )
    max_request_bytes: int = Field(default=1_000_000, ge=1024, description="Largest request body accepted.")
    cors_origins: list[str] = Field(default=[], description="Origins allowed by CORS; empty: none.")
    max_active_runs: int = Field(default=32, ge=1, description="Research runs in progress at once.")


class Settings(BaseSettings):
    """Where data lives, which database and model to use, and the sections of each part."""

    model_config = SettingsConfigDict(env_prefix="DEEPSCOUT_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Data folder: database, corpora, runs.")
    cache_dir: Path = Field(
        default_factory=_default_cache_dir, description="Model cache: fetched packages, converted weights."
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; defaults to a SQLite file in HOME. PostgreSQL works too."
    )
    model: str = Field(default="smollm2", description="Default chat model spec, e.g. smollm2, openai:MODEL.")
    web: WebSettings = Field(default_factory=WebSettings, description="The open-web tools.")
    openai: OpenAISettings = Field(default_factory=OpenAISettings, description="OpenAI-compatible servers.")
    v4: V4Settings = Field(default_factory=V4Settings, description="The embedded DeepSeek-V4 runtime.")
    hf: HFSettings = Field(default_factory=HFSettings, description="The embedded Hugging Face models.")
    server: ServerSettings = Field(default_factory=ServerSettings, description="The HTTP server.")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'deepscout.db'}"
