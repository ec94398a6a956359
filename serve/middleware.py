"""The two ASGI middlewares: the access log (with the request metrics) and the request-body cap.

Both are plain ASGI, not Starlette's BaseHTTPMiddleware: the access log must see the 500
of an exception no handler caught, which Starlette's outermost middleware answers only
after the exception has passed through every middleware inside it; the cap must count the
bytes as they arrive, before anything parses them.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agile.serve import metrics
from agile.serve.errors import BodyTooLarge

log = logging.getLogger("agile.serve")


class AccessLog:
    """One line and one count per answer: the route, status and time, never the query string
    (`?key=` carries the API key) nor any body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), None

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            status = status or 500  # unhandled: Starlette's ServerErrorMiddleware, outside us, answers 500
            raise
        finally:
            if status is not None:  # None: cancelled before any answer (the server is stopping)
                route = getattr(scope.get("route"), "path", "other")
                seconds = time.perf_counter() - start
                metrics.REQUESTS.labels(route, str(status)).inc()
                metrics.SECONDS.labels(route).observe(seconds)
                log.info("%s %s %d %.1f ms", scope["method"], route, status, seconds * 1000)


class BodyLimit:
    """413 for a request body over `max_bytes`: when the route first reads it, if Content-Length
    says so, else (a chunked body) as soon as the bytes read pass it, so at most the cap is held."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")  # digits only: uvicorn refuses others
        read = 0

        async def reading() -> Message:
            nonlocal read
            if declared is not None and int(declared) > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            message = await receive()
            read += len(message.get("body", b""))
            if read > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, reading, send)
