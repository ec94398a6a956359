"""API keys, checked the way Google checks them, so Perspective clients see the errors they expect.

A key comes as `?key=` (what Perspective clients send), the `X-Goog-Api-Key` header,
or `Authorization: Bearer`. No key: 403 PERMISSION_DENIED; a wrong `key` or header:
400 INVALID_ARGUMENT (API_KEY_INVALID); a wrong bearer token: 401 UNAUTHENTICATED.
Keys are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from agile.serve.errors import ApiError

QUERY = APIKeyQuery(name="key", auto_error=False)
HEADER = APIKeyHeader(name="X-Goog-Api-Key", auto_error=False)
BEARER = HTTPBearer(auto_error=False)


def _known(key: str, keys: frozenset[str]) -> bool:
    found = False
    for candidate in keys:  # every key compared, so the time says nothing about which one is close
        found |= hmac.compare_digest(key.encode(), candidate.encode())
    return found


def key_error(request: Request) -> ApiError | None:
    """What is wrong with the request's key, or None when it may pass.

    Read from the request itself, so the handler of an unreadable body can check the key
    first: a client without a key hears 403 whatever its body says, as from Google.
    """
    keys: frozenset[str] = request.app.state.keys
    if not keys:  # started with --open
        return None
    given = request.query_params.get("key") or request.headers.get("x-goog-api-key")
    if given is not None:
        return None if _known(given, keys) else ApiError(400, "API key not valid. Please pass a valid API key.")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return None if _known(token, keys) else ApiError(401, "Request had invalid authentication credentials.")
    return ApiError(403, "The request is missing a valid API key.")


def require_key(request: Request, query: Annotated[str | None, Depends(QUERY)],
                header: Annotated[str | None, Depends(HEADER)],
                bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
    """The dependency every scoring route takes (the three schemes name the key in the OpenAPI document)."""
    problem = key_error(request)
    if problem is not None:
        raise problem
