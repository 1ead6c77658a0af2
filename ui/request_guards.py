"""Who is calling and how much they may ask: bearer tokens, a per-caller rate limit and a body-size cap.

With tokens configured, every API request needs ``Authorization: Bearer <token>``; the caller is the
token's digest, which owns the threads it creates. Without tokens, every caller is ``local`` (and the
server binds only loopback, see :func:`deepscout.ui.server.check_bind`).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import deque

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deepscout.ui.http_errors import ApiError, error_response

ANONYMOUS_OWNER = "local"


def token_owner(token: str) -> str:
    """The owner id of a token: a digest, so the database never holds the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


class TokenCheck:
    """Checks an ``Authorization`` header against the configured tokens (constant-time)."""

    def __init__(self, tokens: list[str]) -> None:
        self._tokens = [token.encode() for token in tokens]

    @property
    def required(self) -> bool:
        return bool(self._tokens)

    def owner(self, authorization: str | None) -> str:
        if not self._tokens:
            return ANONYMOUS_OWNER
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(
                401, "missing bearer token: send 'Authorization: Bearer <token>'", kind="auth_error"
            )
        candidate = given.strip().encode()
        if not any(hmac.compare_digest(candidate, token) for token in self._tokens):
            raise ApiError(401, "invalid API token", kind="auth_error")
        return token_owner(candidate.decode())


class RateLimiter:
    """At most ``per_minute`` requests per caller in any sliding minute."""

    def __init__(self, per_minute: int) -> None:
        self._per_minute = per_minute
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, caller: str) -> None:
        now = time.monotonic()
        with self._lock:
            recent = self._seen.setdefault(caller, deque())
            while recent and recent[0] <= now - 60.0:
                recent.popleft()
            if len(recent) >= self._per_minute:
                wait = int(recent[0] + 60.0 - now) + 1
                raise ApiError(
                    429, f"rate limit of {self._per_minute} requests a minute reached; retry in {wait}s"
                )
            recent.append(now)


class BodySizeLimit:
    """ASGI middleware: refuses request bodies over ``max_bytes`` with 413, whether declared
    (``Content-Length``) or streamed; a body within the limit is read here and handed on whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = error_response(413, f"request body over {self.max_bytes} bytes", "invalid_request_error")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await too_large(scope, receive, send)
            return
        body: list[Message] = []
        received = 0
        while True:
            message = await receive()
            body.append(message)
            if message["type"] != "http.request":
                break
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                await too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return body.pop(0) if body else await receive()

        await self.app(scope, replay, send)
