"""A real `agile serve` process in front of a real worker on the tiny model, on a private Redis.

Two tiny policies: `tiny-toxic` (queue_fixtures' random adapter, positive label
Toxic) and `tiny-safe`, the same weights with Safe as its positive label, so its
score must be exactly 1 - tiny-toxic's: a check that the server reads the policy's
positive label and not a fixed word. Every process started here is killed in teardown.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from queue_fixtures import ROOT, free_port, queue_env, wait_for

from agile.broker import body_of

KEYS = ("key-" + uuid.uuid4().hex[:10], "key-" + uuid.uuid4().hex[:10])  # the second comes from a keys file
ATTRIBUTES = {"languages": ["en"],
              "attributes": {"TOXICITY": "tiny-toxic", "IDENTITY_ATTACK": "tiny-toxic", "THREAT": "tiny-safe",
                             "SEVERE_TOXICITY": "tiny-missing"}}  # mapped to an adapter the workers lack


def tiny_policies(adapter_dir: Path, root: Path) -> Path:
    """A directory with tiny-toxic and tiny-safe (its twin with the other positive label)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(adapter_dir / "tiny-toxic", root / "tiny-toxic", dirs_exist_ok=True)
    shutil.copytree(adapter_dir / "tiny-toxic", root / "tiny-safe", dirs_exist_ok=True)
    meta_path = root / "tiny-safe" / "adapter.json"
    meta = json.loads(meta_path.read_text())
    meta.update(name="tiny-safe", positive_label="Safe")
    meta_path.write_text(json.dumps(meta))
    return root


class Server:
    """`python -m agile.cli.main serve` on a free port; its log is kept to check what it wrote."""

    def __init__(self, env: dict[str, str], logdir: Path, args: tuple[str, ...] = ()):
        self.port = free_port()
        self.env = env
        self.args = args
        self.log = logdir / f"serve-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agile.cli.main", "serve", "--port", str(self.port), *self.args],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 60) -> Server:
        def up() -> bool:
            if self.proc.poll() is not None:
                return True
            try:
                return httpx.get(f"{self.url}/openapi.json", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout, f"agile serve on port {self.port}")
        assert self.proc.poll() is None, f"agile serve exited:\n{self.text()[-3000:]}"
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def kill(self) -> None:
        self.stop()


def serve_env(base: dict[str, str], workdir: Path, **settings) -> dict[str, str]:
    """The worker's environment plus the server's keys, attribute map and settings."""
    attributes = workdir / "attributes.json"
    attributes.write_text(json.dumps(ATTRIBUTES))
    keys_file = workdir / "keys.txt"
    keys_file.write_text(f"# one key per line\n\n{KEYS[1]}\n")
    env = {**base, "AGILE_API_KEYS": f" {KEYS[0]} ,", "AGILE_API_KEYS_FILE": str(keys_file),
           "AGILE_SERVE_ATTRIBUTES": str(attributes)}
    env.update({f"AGILE_SERVE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@pytest.fixture(scope="module")
def stack(module_processes, tiny_preset, adapter_dir, tmp_path_factory):
    """Private Redis, one worker tracing its batches, one server; all module-scoped."""
    work = tmp_path_factory.mktemp("serve")
    redis = module_processes.redis()
    trace = f"trace-{uuid.uuid4().hex[:6]}"
    env = queue_env(redis.url, tiny_preset, tiny_policies(adapter_dir, work / "adapters"), QUEUE_TEST_TRACE=trace)
    worker = module_processes.worker("sw1", env)
    server = Server(serve_env(env, work, coalesce_ms=20), work).start()
    module_processes.started.append(server)
    worker.wait_ready()
    server.wait_ready()
    return {"env": env, "redis": redis, "worker": worker, "server": server, "trace": trace, "work": work}


def analyze(url: str, body, key: str | None = KEYS[0], **kwargs) -> httpx.Response:
    params = {"key": key} if key else {}
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(f"{url}/v1alpha1/comments:analyze", params=params, content=content,
                      headers={"Content-Type": "application/json", **kwargs.pop("headers", {})}, timeout=60, **kwargs)


def _decoded(value: str) -> str:
    """A queued Celery message's body in clear (ours is, Celery's is base64), so a leak check can read it."""
    try:
        return value + "\n" + body_of(json.loads(value))
    except (ValueError, TypeError, KeyError, AttributeError):
        return value


def redis_strings(client) -> str:
    """Every key name and value in the Redis database (message bodies decoded), for leak checks."""
    parts = []
    for key in client.scan_iter(count=1000):
        parts.append(key)
        kind = client.type(key)
        if kind == "string":
            parts.append(_decoded(client.get(key) or ""))
        elif kind == "hash":
            parts += [f"{k}={_decoded(v)}" for k, v in client.hgetall(key).items()]
        elif kind == "list":
            parts += [_decoded(v) for v in client.lrange(key, 0, -1)]
        elif kind == "set":
            parts += sorted(client.smembers(key))
        elif kind == "zset":
            parts += client.zrange(key, 0, -1)
    return "\n".join(parts)


def wait_until(predicate, timeout: float = 10, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()

