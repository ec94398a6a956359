"""The server's settings: a typed dataclass read from AGILE_API_KEYS*, AGILE_SERVE_* and flags.

The queue side (Redis URL, queue name, key prefix) stays in `agile.settings.QueueSettings`,
shared with the workers; `agile.settings.SERVE_KEYS` lists these variables so the
workers' strict check of AGILE_* names accepts them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agile.settings import SettingsError, from_env
from agile.wire import MAX_ITEMS, MAX_TEXT_CHARS

_ENV = {"api_keys": "AGILE_API_KEYS", "api_keys_file": "AGILE_API_KEYS_FILE"}


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: str = ""  # comma-separated
    api_keys_file: str = ""  # one key per line; blank lines and # comments ignored
    open: bool = False  # serve without keys, on purpose
    attributes: str = ""  # JSON file mapping Perspective attributes to policies; "" = the default map
    max_text_bytes: int = 20_480  # Perspective's limit: 20 KB of UTF-8 per comment
    max_comments: int = 1024  # per /v1/score request
    max_body_bytes: int = 4 * 1024 * 1024  # per request body, then 413 before it is parsed
    coalesce_ms: float = 5.0  # how long a batch waits for more comments before it is sent
    max_batch: int = 64  # comments per task
    max_queue: int = 256  # tasks waiting in the queue at which requests get 429
    timeout: float = 30.0  # s a request waits for its scores before 504

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise SettingsError(f"AGILE_SERVE_PORT must be a port number, got {self.port}")
        if not 0 < self.max_text_bytes <= MAX_TEXT_CHARS:
            raise SettingsError(f"AGILE_SERVE_MAX_TEXT_BYTES must be within 1..{MAX_TEXT_CHARS}")
        if self.max_body_bytes < self.max_text_bytes:
            raise SettingsError(f"AGILE_SERVE_MAX_BODY_BYTES must be at least AGILE_SERVE_MAX_TEXT_BYTES "
                                f"({self.max_text_bytes}), or no comment at the limit fits, got {self.max_body_bytes}")
        if not 0 < self.max_batch <= MAX_ITEMS:
            raise SettingsError(f"AGILE_SERVE_MAX_BATCH must be within 1..{MAX_ITEMS}, got {self.max_batch}")
        for name in ("max_comments", "max_queue"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{env_name(name)} must be at least 1, got {getattr(self, name)}")
        if self.coalesce_ms < 0 or self.timeout <= 0:
            raise SettingsError("AGILE_SERVE_COALESCE_MS must be >= 0 and AGILE_SERVE_TIMEOUT > 0")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> ServeSettings:
        """Defaults, then the variables, then `overrides` (flags; None means 'not given')."""
        return from_env(cls, os.environ if env is None else env, env_name, overrides)

    def keys(self) -> frozenset[str]:
        """Every API key configured, from AGILE_API_KEYS and the keys file."""
        found = {k.strip() for k in self.api_keys.split(",") if k.strip()}
        if self.api_keys_file:
            path = Path(self.api_keys_file)
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise SettingsError(f"AGILE_API_KEYS_FILE: cannot read {path}: {exc.strerror}") from None
            found |= {ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")}
        return frozenset(found)


def env_name(field_name: str) -> str:
    return _ENV.get(field_name, f"AGILE_SERVE_{field_name.upper()}")

