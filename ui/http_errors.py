"""Errors as clear JSON for clients: ``{"error": {"message", "type", "code"}}`` (the OpenAI shape), never
a stack trace. Deliberate errors (``DeepscoutError``) are 4xx with their one-line message; anything else
is logged here and answered with a bare 500."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from deepscout.errors import DeepscoutError
from deepscout.memory.repository import RecordNotFoundError

logger = logging.getLogger(__name__)


class ApiError(DeepscoutError):
    """A request the server refuses: ``status`` is the HTTP status, the message says what to change."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def error_response(
    status: int, message: str, kind: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "code": status}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, str(error), error.kind)

    @app.exception_handler(RecordNotFoundError)
    async def _not_found(request: Request, error: RecordNotFoundError) -> JSONResponse:
        return error_response(404, str(error), "not_found_error")

    @app.exception_handler(DeepscoutError)
    async def _deliberate(request: Request, error: DeepscoutError) -> JSONResponse:
        return error_response(400, str(error), "invalid_request_error")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), "invalid_request_error", error.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
            for problem in error.errors()
        )
        return error_response(422, problems or "invalid request", "invalid_request_error")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error", "server_error")
