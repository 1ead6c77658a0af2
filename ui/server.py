"""Running the app under uvicorn, after checking that the configuration is safe to expose."""

from __future__ import annotations

import ipaddress

import uvicorn

from deepscout.errors import DeepscoutError
from deepscout.model_runtime.chat import BackendRegistry
from deepscout.settings import ServerSettings, Settings
from deepscout.ui.app import create_app


class UnsafeBindError(DeepscoutError):
    """The server would listen beyond this machine without API tokens."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(server: ServerSettings) -> None:
    """Refuse a non-loopback address unless API tokens are configured."""
    if not server.api_tokens and not is_loopback(server.host):
        raise UnsafeBindError(
            f"refusing to listen on {server.host} without API tokens; set DEEPSCOUT_SERVER_API_TOKENS "
            "(a JSON list) or bind 127.0.0.1"
        )


def build_server(settings: Settings, *, registry: BackendRegistry | None = None) -> uvicorn.Server:
    """A uvicorn server for the app (not started), after the bind check."""
    check_bind(settings.server)
    config = uvicorn.Config(
        create_app(settings, registry=registry),
        host=settings.server.host,
        port=settings.server.port,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)
