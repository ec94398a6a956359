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


def require_key(request: Request, query: Annotated[str | None, Depends(QUERY)],
                header: Annotated[str | None, Depends(HEADER)],
                bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
    """The dependency every scoring route takes; the app's state holds the configured keys."""
    keys: frozenset[str] = request.app.state.keys
    if not keys:  # started with --open
        return
    given = query or header
    if given is not None:
        if not _known(given, keys):
            raise ApiError(400, "API key not valid. Please pass a valid API key.")
        return
    if bearer is not None:
        if not _known(bearer.credentials, keys):
            raise ApiError(401, "Request had invalid authentication credentials.")
        return
    raise ApiError(403, "The request is missing a valid API key.")
