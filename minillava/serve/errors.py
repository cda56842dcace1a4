"""OpenAI-style errors: an HTTP status and {"error": {"message", "type", "param", "code"}}, never FastAPI's 422."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)

# The error "type" OpenAI clients see for each status.
TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
         500: "internal_server_error", 503: "service_unavailable"}


# Names pydantic gives union branches in error locations (not fields of the request).
UNION_BRANCH = re.compile(r"[\[\-]|^(str|int|float|bool|list|dict|none)$")


class APIError(Exception):
    """An error to send to the client as it is."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {401: {"WWW-Authenticate": "Bearer"}, 429: {"Retry-After": "1"}}.get(self.status)
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, code: str = "invalid_request", param: str | None = None) -> APIError:
    return APIError(400, message, code, param)


def validation_error(error: RequestValidationError) -> APIError:
    """Pydantic's most specific complaint as one readable line; malformed JSON lands here too."""
    errors = error.errors()
    # Of a union's failed branches, the one that got deepest into the value says the most.
    first = max(reversed(errors), key=lambda e: len(e.get("loc", ()))) if errors else {}
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", "")
        return bad_request(f"the request body is not valid JSON: {reason}".rstrip(": "), "invalid_json")
    param = _location(first.get("loc", ()))
    return bad_request(f"{param or 'the request body'}: {first.get('msg', 'invalid')}", "invalid_value", param)


def _location(loc) -> str | None:
    """('body', 'messages', 0, 'content', 'list[...]', 0, 'text') -> 'messages.0.content.0.text'."""
    parts: list[str] = []
    for part in map(str, loc):
        if (part == "body" and not parts) or UNION_BRANCH.search(part) or (parts and parts[-1] == part):
            continue
        parts.append(part)
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return validation_error(error).response()

    @app.exception_handler(HTTPException)
    async def _http(_: Request, error: HTTPException) -> JSONResponse:
        return APIError(error.status_code, str(error.detail), code=None).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        log.exception("internal error")
        return APIError(500, f"internal server error: {type(error).__name__}", "internal_error").response()
