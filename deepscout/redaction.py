"""Secrets out of error text: what a server echoes back and what a URL carries, masked before the text is
stored (database, checkpoints, reports) or printed.

:func:`redact_secrets` masks the values it is given (an API key), credentials written into URLs, and the
shapes secrets take in echoed requests: ``Authorization``/``Proxy-Authorization`` headers, ``Bearer``
tokens, ``X-Api-Key``/``X-Subscription-Token`` headers, ``api_key=…``/``token=…`` parameters and
``sk-…`` keys. :func:`redact_url` does the same for one URL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
_MIN_SECRET_CHARS = 4  # shorter "secrets" (e.g. the placeholder key "EMPTY" is longer) would mask words
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@?#]*@")
_HEADER = re.compile(
    r"(?i)((?:proxy-)?authorization|x-api-key|api-key|x-subscription-token|x-goog-api-key|cookie)"
    r"([\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic|token|digest)\s+)?[^\s\"',;}]+"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}")
_PARAMETER = re.compile(
    r"(?i)\b(api[_-]?key|apikey|access[_-]?token|token|secret|password|passwd|key)"
    r"([\"']?\s*[=:]\s*[\"']?)[^\s&\"',;}]{4,}"
)
_KEY_SHAPES = re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{8,}")


def redact_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the given ``secrets`` and anything shaped like a credential replaced by ``***``."""
    for secret in sorted({s for s in secrets if len(s) >= _MIN_SECRET_CHARS}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL_USERINFO.sub(rf"\1{MASK}@", text)
    text = _HEADER.sub(rf"\1\2{MASK}", text)
    text = _BEARER.sub(rf"\1 {MASK}", text)
    text = _PARAMETER.sub(rf"\1\2{MASK}", text)
    return _KEY_SHAPES.sub(MASK, text)


def redact_url(url: str) -> str:
    """``url`` with its user name and password and any key- or token-like query parameter masked."""
    return redact_secrets(url)
