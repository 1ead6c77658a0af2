"""FastAPI dependencies, as ``Annotated`` aliases: the server state and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from deepscout.ui.server_state import ServerState

_bearer = HTTPBearer(auto_error=False, description="An API token, when the server is configured with tokens.")


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.deepscout
    return state


State = Annotated[ServerState, Depends(_state)]


def _caller(
    state: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The caller's owner id (checked token, or ``local`` without tokens), within its rate limit."""
    header = None if credentials is None else f"{credentials.scheme} {credentials.credentials}"
    owner = state.tokens.owner(header)
    state.limiter.check(owner)
    return owner


Caller = Annotated[str, Depends(_caller)]
