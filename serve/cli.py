"""`agile serve`: the HTTP server (uvicorn, one process). Without API keys it starts only with --open."""

from __future__ import annotations

import logging
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="Perspective-compatible HTTP API in front of the workers",
        description="Serves POST /v1alpha1/comments:analyze (Perspective) and POST /v1/score, enqueueing to "
                    "the workers through AGILE_REDIS_URL. API keys: AGILE_API_KEYS or AGILE_API_KEYS_FILE.",
    )
    p.add_argument("--host", help="address to listen on (AGILE_SERVE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (AGILE_SERVE_PORT, default 8080)")
    p.add_argument("--attributes", help="JSON file mapping attributes to policies (AGILE_SERVE_ATTRIBUTES)")
    p.add_argument("--open", action="store_true", default=None,
                   help="serve without API keys, on purpose (AGILE_SERVE_OPEN)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=run)


def run(args) -> int:
    from agile.serve.attributes import AttributeMap
    from agile.serve.settings import ServeSettings
    from agile.settings import QueueSettings, SettingsError

    try:
        queue = QueueSettings.from_env()  # refuses unknown AGILE_* names, AGILE_SERVE_* typos included
        settings = ServeSettings.from_env(host=args.host, port=args.port, attributes=args.attributes,
                                          open=args.open)
        keys = settings.keys()
        attributes = AttributeMap.load(settings.attributes)
    except SettingsError as exc:
        print(f"agile: error: {exc}", file=sys.stderr)
        return 2
    if not keys and not settings.open:
        print("agile: error: no API keys: set AGILE_API_KEYS (comma-separated) or AGILE_API_KEYS_FILE, "
              "or pass --open to serve without keys on purpose", file=sys.stderr)
        return 2
    if keys and settings.open:
        print("agile: error: --open and API keys together: choose one", file=sys.stderr)
        return 2

    import uvicorn

    from agile.serve.app import create_app

    logging.getLogger("agile").setLevel(args.log_level.upper())
    if settings.open:
        logging.getLogger("agile.serve").warning("serving WITHOUT API keys (--open)")
    app = create_app(settings, queue, keys, attributes)
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, log_level=args.log_level,
                timeout_graceful_shutdown=int(settings.timeout) + 5)
    return 0
