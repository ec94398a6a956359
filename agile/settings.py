"""Queue settings from the environment (AGILE_<FIELD>), with command-line flags to match.

One typed dataclass read by the worker, the producer and the service client, so
both sides of the queue agree. An AGILE_* variable nobody knows is an error: a
typo such as AGILE_VISIBLITY_TIMEOUT must not silently fall back to a default.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from agile.wire import DEFAULT_QUEUE, MAX_ITEMS

# AGILE_* variables of `agile serve` (agile.serve.settings, which the core does not import; a test holds the two
# lists together).
SERVE_KEYS = frozenset({
    "AGILE_API_KEYS", "AGILE_API_KEYS_FILE", "AGILE_SERVE_HOST", "AGILE_SERVE_PORT", "AGILE_SERVE_OPEN",
    "AGILE_SERVE_ATTRIBUTES", "AGILE_SERVE_MAX_TEXT_BYTES", "AGILE_SERVE_MAX_COMMENTS", "AGILE_SERVE_MAX_BODY_BYTES",
    "AGILE_SERVE_COALESCE_MS", "AGILE_SERVE_MAX_BATCH", "AGILE_SERVE_MAX_QUEUE", "AGILE_SERVE_TIMEOUT",
})
CHECKOUT_DATA = Path(__file__).resolve().parent.parent / "data"  # the repository's data/, in a checkout only


MAX_IN_HAND = 4  # batches a worker holds at once: past two, only memory grows (one device)


class SettingsError(ValueError):
    """A setting is unknown or has a value that cannot work; the message names the variable."""


@dataclass(frozen=True)
class HomeSettings:
    """Where agile keeps and finds its own files on this machine (AGILE_HOME, AGILE_DATA)."""

    home: str = "~/.cache/agile"  # model presets; frozen/: what `agile train --lora-blocks` keeps for a next round
    data: str = ""  # a folder laid out like the repository's data/ (ETHOS); "": the checkout's own

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HomeSettings:
        return from_env(cls, os.environ if env is None else env, env_name, {})

    @property
    def home_dir(self) -> Path:
        return Path(self.home).expanduser()

    def data_file(self, relative: str) -> Path:
        """A file of data/ (e.g. 'ethos/Ethos_Dataset_Binary.csv'), or one SettingsError saying where to get it.

        ETHOS is GPL-3.0 data: it stays in the repository and is not in a wheel."""
        base = Path(self.data).expanduser() if self.data else CHECKOUT_DATA
        path = base / relative
        if not path.is_file():
            where = f"AGILE_DATA={self.data}" if self.data else "this installation (ETHOS is not in a wheel)"
            raise SettingsError(f"{relative} is not in {where}: run from a checkout of the repository, or set "
                                "AGILE_DATA to a copy of its data/ folder")
        return path


@dataclass(frozen=True)
class QueueSettings:
    redis_url: str = "redis://127.0.0.1:6379/0"  # broker and result backend; rediss:// for TLS
    queue: str = DEFAULT_QUEUE
    visibility_timeout: int = 1800  # s before an unacknowledged batch is delivered again
    adapter_path: str = ""  # extra adapter directories (os.pathsep-separated), besides adapters/
    model: str = "gemma3_270m"  # the one model a worker serves
    key_prefix: str = "agile"  # Redis keys of jobs: <prefix>:job:<id>:...
    max_deliveries: int = 3  # a batch that failed or killed its worker this often is marked failed
    batch_size: int = 0  # comments per queued task; 0: sized by the live workers (agile.fleet.task_size)
    max_in_flight: int = 32  # batches of one job sent and not yet written back (Redis memory bound)
    max_bytes_in_flight: int = 64 << 20  # and their queued message bytes (long comments)
    scoring_batch: int = 0  # rows per forward pass inside a worker; 0: the device's default (16 CPU, 512 GPU)
    adapter_cache: int = 4  # adapters kept loaded per worker
    metrics_port: int = 9808  # Prometheus; 0 disables
    log_format: str = "text"  # or json
    shutdown_timeout: float = 60.0  # s a stopping worker gives its batch before requeueing it
    # Batches a worker holds at once: 2 lets one batch's CPU work (parsing, tokenizing, write-back) run
    # while another has the model (agile.worker.overlap); 0: 2 on a GPU, 1 on a CPU (nothing to overlap).
    tasks_in_hand: int = 0
    job_ttl: int = 7 * 24 * 3600  # s a job's keys live after its last write

    def __post_init__(self) -> None:
        scheme = urlsplit(self.redis_url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise SettingsError(f"AGILE_REDIS_URL must be redis://, rediss:// or unix://, got {scheme!r}://")
        positive = ("visibility_timeout", "max_deliveries", "max_in_flight", "max_bytes_in_flight",
                    "adapter_cache", "job_ttl")
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingsError(f"{env_name(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("batch_size", "scoring_batch"):  # 0: chosen for the device
            if getattr(self, name) < 0:
                raise SettingsError(f"{env_name(name)} must be at least 1, or 0 for the default, "
                                    f"got {getattr(self, name)}")
        if not 0 <= self.tasks_in_hand <= MAX_IN_HAND:
            raise SettingsError(f"AGILE_TASKS_IN_HAND must be 0 (the device's default) to {MAX_IN_HAND}, "
                                f"got {self.tasks_in_hand}")
        if self.batch_size > MAX_ITEMS:
            raise SettingsError(f"AGILE_BATCH_SIZE must be at most {MAX_ITEMS}, got {self.batch_size}")
        if not 0 <= self.metrics_port < 65536:
            raise SettingsError(f"AGILE_METRICS_PORT must be a port number or 0, got {self.metrics_port}")
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"AGILE_LOG_FORMAT must be 'text' or 'json', got {self.log_format!r}")
        if not self.queue or not self.key_prefix:
            raise SettingsError("AGILE_QUEUE and AGILE_KEY_PREFIX must not be empty")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> QueueSettings:
        """Defaults, then AGILE_* variables, then `overrides` (flags; None means 'not given')."""
        env = os.environ if env is None else env
        known = {env_name(f.name): f for f in fields(cls)}
        unknown = sorted(k for k in env if k.startswith("AGILE_") and k not in known and k not in OTHER_KEYS)
        if unknown:
            raise SettingsError(
                f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(set(known) | OTHER_KEYS))}"
            )
        return from_env(cls, env, env_name, overrides)

    def with_(self, **changes) -> QueueSettings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_env(self) -> dict[str, str]:
        """The AGILE_* variables that reproduce these settings (for worker subprocesses)."""
        return {env_name(f.name): str(getattr(self, f.name)) for f in fields(self)}

    @property
    def masked_url(self) -> str:
        return mask_url(self.redis_url)

    def redis_client(self):
        """A redis-py client (str responses) that rides out a Redis restart of up to ~30 s."""
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        return redis.Redis.from_url(
            self.redis_url, decode_responses=True, retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 40),
            socket_connect_timeout=5, socket_timeout=30, health_check_interval=15,
        )

    def celery_config(self) -> dict:
        """Celery settings for both sides: JSON only, late acks, one batch at a time."""
        restore_every = max(1, min(10, self.visibility_timeout // 4))
        transport = {
            "visibility_timeout": self.visibility_timeout,
            # Scan for batches orphaned by a dead worker every few seconds (kombu's
            # default is 10 x 10 s), so redelivery takes about the timeout, not 100 s more.
            "unacked_restore_interval": restore_every,
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 5,
            "socket_timeout": max(30, restore_every * 3),
            "health_check_interval": 15,
            # Take from the queues in the order the worker names them (interactive first, agile.wire.lanes),
            # instead of kombu's default round robin, which would let a bulk backlog delay a request.
            "queue_order_strategy": "priority",
        }
        config = dict(
            broker_url=self.redis_url,
            result_backend=self.redis_url,
            broker_transport_options=transport,
            result_backend_transport_options={"visibility_timeout": self.visibility_timeout},
            broker_connection_retry_on_startup=True,
            broker_connection_max_retries=None,  # a worker waits for Redis rather than exit
            task_serializer="json",
            result_serializer="json",
            accept_content=["json"],
            result_accept_content=["json"],
            task_default_queue=self.queue,
            task_acks_late=True,
            task_reject_on_worker_lost=True,
            task_publish_retry=True,
            task_publish_retry_policy={"max_retries": 60, "interval_start": 0.2,
                                       "interval_step": 0.5, "interval_max": 2},
            worker_prefetch_multiplier=1,
            worker_pool="solo",  # one process per GPU; nothing forks after CUDA starts
            worker_concurrency=1,
            worker_cancel_long_running_tasks_on_connection_loss=True,
            worker_soft_shutdown_timeout=self.shutdown_timeout,
            result_expires=24 * 3600,
        )
        if urlsplit(self.redis_url).scheme == "rediss" and "ssl_cert_reqs" not in parse_qs(
            urlsplit(self.redis_url).query
        ):
            config["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
            config["redis_backend_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        return config


def env_name(field_name: str) -> str:
    return f"AGILE_{field_name.upper()}"


OTHER_KEYS = frozenset({*(env_name(f.name) for f in fields(HomeSettings)), *SERVE_KEYS})


TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def from_env(cls, env: Mapping[str, str], name_of: Callable[[str], str], overrides: dict):
    """The one reading of a settings dataclass: its defaults, then its variables, then `overrides`
    (flags; None means 'not given'). Each value is parsed as its default's type; a bad one is a
    SettingsError naming the variable."""
    values: dict = {}
    for f in fields(cls):
        key = name_of(f.name)
        if key not in env:
            continue
        raw, default = env[key], getattr(cls, f.name)
        if isinstance(default, bool):
            if raw.lower() not in TRUE + FALSE:
                raise SettingsError(f"{key}={raw!r} must be one of {', '.join(TRUE + FALSE[:-1])}")
            values[f.name] = raw.lower() in TRUE
            continue
        try:
            values[f.name] = type(default)(raw)
        except ValueError:
            raise SettingsError(f"{key}={raw!r} is not a valid {type(default).__name__}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, safe to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
