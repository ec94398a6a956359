"""The ASGI app: routes, error shapes, the Redis connection, health, metrics, an access log, a body cap.

The access log is ours (uvicorn's is off, serve.middleware.AccessLog): it names the route,
status and time, never the query string (`?key=` carries the API key) nor any body.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from agile.serve import discovery, errors, native, perspective
from agile.serve.attributes import AttributeMap
from agile.serve.errors import ApiError
from agile.serve.middleware import AccessLog, BodyLimit
from agile.serve.models import Error, Health
from agile.serve.queue_client import TaskQueue
from agile.serve.service import Service
from agile.serve.settings import ServeSettings
from agile.settings import QueueSettings

log = logging.getLogger("agile.serve")


def async_redis(settings: QueueSettings):
    """A redis.asyncio client that rides out a Redis restart of about 2 s (then requests get 503)."""
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    return redis.asyncio.Redis.from_url(
        settings.redis_url, decode_responses=True, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 6),
        socket_connect_timeout=5, socket_timeout=10, health_check_interval=15,
    )


def create_app(settings: ServeSettings, queue: QueueSettings, keys: frozenset[str],
               attributes: AttributeMap) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        client = async_redis(queue)
        tasks = TaskQueue(queue, client)
        app.state.service = Service(settings, attributes, tasks)
        log.info("serving attributes %s for queue %r at %s", ", ".join(sorted(attributes.attributes)),
                 queue.queue, queue.masked_url)
        yield
        await tasks.close()
        await client.aclose()

    app = FastAPI(title="agile serve", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Perspective-compatible comment scoring by agile policies. See docs/API.md.")
    app.state.keys = keys
    errors.install(app)
    app.include_router(perspective.router)
    app.include_router(native.router)
    app.include_router(discovery.router)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Error}}, summary="Redis reachable")
    async def healthz(request: Request) -> Health:
        try:
            queued, in_flight = await request.app.state.service.queue.depth()
        except RedisError as exc:
            raise ApiError(503, f"Redis is unreachable: {type(exc).__name__}") from None
        return Health(status="ok", queued=queued, in_flight=in_flight)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLog)  # the last added is the outermost: it sees every answer, the 413 included

    app.openapi = lambda: app.openapi_schema or _document(app, settings, attributes)
    return app


def _document(app: FastAPI, settings: ServeSettings, attributes: AttributeMap) -> dict:
    """FastAPI's OpenAPI document, made exact: the attribute and policy names this server accepts
    (so generated clients and fuzzers know them), and no 422, which the server never answers."""
    from fastapi.openapi.utils import get_openapi

    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path in doc["paths"].values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    schemas = doc["components"]["schemas"]
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["AnalyzeRequest"]["properties"]["requestedAttributes"]["propertyNames"] = {
        "enum": sorted(attributes.attributes)}
    policies = schemas["ScoreRequest"]["properties"]["policies"]
    policies["items"]["enum"], policies["uniqueItems"] = attributes.policies, True
    schemas["ScoreRequest"]["properties"]["thresholds"]["propertyNames"] = {"enum": attributes.policies}
    schemas["ScoreRequest"]["properties"]["comments"]["maxItems"] = settings.max_comments
    schemas["TextEntry"]["properties"]["text"]["minLength"] = 1  # checked by the route, with a clearer message
    app.openapi_schema = doc
    return doc
