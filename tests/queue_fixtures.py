"""Real Redis servers, real Celery worker processes and a tiny model for the queue tests.

Nothing here mocks Celery or Redis. Workers are `celery -A agile.worker worker`
subprocesses on the tiny random model; every process a fixture starts is killed
in its teardown. Imported inside workers too (`--include queue_fixtures`), where
`install_hooks` adds test-only behaviour switched on by QUEUE_TEST_* variables:
a delay before each batch (so a test can act mid-batch), a trace of batches in
Redis, and a worker that kills itself on a marked batch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
POISON_KILL = "__queue_test_kill__"
POISON_RAISE = "__queue_test_raise__"


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class RedisServer:
    """A private redis-server on a free port: with an append-only file (`persist`), or keeping nothing."""

    def __init__(self, workdir: Path, password: str | None = None, persist: bool = True):
        self.port = free_port()
        self.dir = workdir
        self.password = password
        self.persist = persist
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--appendonly", "yes" if self.persist else "no", "--save", "",
                "--logfile", str(self.dir / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args)
        wait_for(self._answers, 10, f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.exceptions.RedisError:
            return False

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, decode_responses=True)


class Worker:
    """One `celery -A agile.worker worker` process on the tiny model (solo pool, or threads with
    AGILE_TASKS_IN_HAND=2)."""

    def __init__(self, name: str, env: dict[str, str], logdir: Path, via_agile: bool = False):
        self.via_agile = via_agile  # start it as `agile worker` instead of `celery -A agile.worker worker`
        self.name = name
        self.env = env
        self.log = logdir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        from agile.wire import lanes

        if self.via_agile:
            args = ["-m", "agile.cli.main", "worker", "--hostname", f"{self.name}@%h",
                    "--", "--include", "queue_fixtures"]
        else:
            args = ["-m", "celery", "-A", "agile.worker", "worker", "--hostname", f"{self.name}@%h",
                    "--queues", ",".join(lanes(self.env["AGILE_QUEUE"])), "--without-mingle", "--without-gossip",
                    "--include", "queue_fixtures", "--loglevel", "INFO"]
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 60) -> Worker:
        wait_for(lambda: "ready." in self.text() or self.proc.poll() is not None, timeout, f"worker {self.name}")
        assert self.proc.poll() is None, f"worker {self.name} exited:\n{self.text()[-3000:]}"
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Supervisor:
    """Restarts a worker whenever it dies, as systemd or Kubernetes would."""

    def __init__(self, make_worker):
        self.make_worker = make_worker
        self.workers: list[Worker] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Supervisor:
        self.workers.append(self.make_worker().start())
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            if self.workers[-1].proc.poll() is not None:
                self.workers.append(self.make_worker().start())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for w in self.workers:
            w.stop()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def adapter_dir(tmp_path_factory, tiny_preset) -> Path:
    """A directory holding two adapters on the tiny model, random LoRA weights of the same layout:
    `tiny-toxic` (labels Toxic/Safe) and `tiny-threat` (positive label Negative, as ethos-hate's; another seed),
    for policy sets; and `tiny-named`, tiny-threat's twin whose outputs read `threat` / `ok`."""
    root = tmp_path_factory.mktemp("queue-adapters")
    for name, labels, seed in (("tiny-toxic", ["Toxic", "Safe"], 0), ("tiny-threat", ["Negative", "Positive"], 1)):
        random_adapter(tiny_preset, root / name, name, labels, seed)
    named = root / "tiny-named"
    shutil.copytree(root / "tiny-threat", named)
    meta = json.loads((named / "adapter.json").read_text())
    (named / "adapter.json").write_text(json.dumps({**meta, "name": "tiny-named", "outputs": ["threat", "ok"]}))
    return root


def random_adapter(preset: Path, path: Path, name: str, labels: list[str], seed: int, lora_blocks: int = 0) -> None:
    """Random LoRA weights (rank 2, query and value) on the tiny model: on every block, or the last `lora_blocks`."""
    import numpy as np

    from agile.adapters import AdapterMeta, enable_lora, save_adapter
    from agile.models import load_model

    model = load_model(str(preset))
    enable_lora(model.backbone, 2, ["query", "value"], lora_blocks)
    rng = np.random.default_rng(seed)
    for v in model.backbone.weights:
        if "lora_kernel" in v.path:
            v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
    meta = AdapterMeta(
        name=name, base_model=str(preset), base_checksum=model.agile_info.checksum,
        labels=labels, instructions="Classify the following text into one of the following classes",
        separator="<separator>", eos="<eos>", rank=2, target_layers=["query", "value"], objective="label",
        max_length=128, positive_label=labels[0], threshold=0.5, settings={"lora_blocks": lora_blocks},
    )
    save_adapter(model, meta, path)


def queue_env(redis_url: str, model: Path, adapters: Path | None = None, **settings) -> dict[str, str]:
    """The environment of a test worker or producer: own queue and key prefix, short timeouts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGILE_", "QUEUE_TEST_"))}
    env.update({
        "AGILE_REDIS_URL": redis_url, "AGILE_MODEL": str(model), "AGILE_METRICS_PORT": "0",
        "AGILE_QUEUE": f"test-{uuid.uuid4().hex[:8]}", "AGILE_KEY_PREFIX": f"test-{uuid.uuid4().hex[:8]}",
        "AGILE_VISIBILITY_TIMEOUT": "3", "PYTHONPATH": str(TESTS),  # the test hooks only; agile is installed
        "QUEUE_TEST_HOOKS": "1",
    })
    if adapters is not None:
        env["AGILE_ADAPTER_PATH"] = str(adapters)
    env.update({k if k.startswith("QUEUE_TEST_") else f"AGILE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def settings_of(env: dict[str, str]):
    from agile.settings import QueueSettings

    return QueueSettings.from_env({k: v for k, v in env.items() if k.startswith("AGILE_")})


class Processes:
    """Starts workers and Redis servers, and kills every one of them in `close`."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.started: list = []

    def redis(self, password: str | None = None, persist: bool = True) -> RedisServer:
        server = RedisServer(self.logdir / f"redis-{len(self.started)}", password, persist).start()
        self.started.append(server)
        return server

    def worker(self, name: str, env: dict[str, str], via_agile: bool = False) -> Worker:
        w = Worker(name, env, self.logdir, via_agile).start()
        self.started.append(w)
        return w

    def supervise(self, name: str, env: dict[str, str]) -> Supervisor:
        sup = Supervisor(lambda: Worker(name, env, self.logdir)).start()
        self.started.append(sup)
        return sup

    def close(self) -> None:
        for thing in reversed(self.started):
            with contextlib.suppress(Exception):
                (thing.kill if isinstance(thing, RedisServer) else thing.stop)()


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory):
    """A redis-server of the test session's own (nothing on disk), never the machine's."""
    server = RedisServer(tmp_path_factory.mktemp("private-redis"), persist=False).start()
    yield server
    server.kill()


@pytest.fixture
def redis_settings(private_redis):
    """Queue settings on the private Redis, its database flushed before and after the test."""
    from agile.settings import QueueSettings

    client = private_redis.client()
    client.flushdb()
    yield QueueSettings(redis_url=private_redis.url, key_prefix="test", queue="test-queue", max_in_flight=3,
                        batch_size=4)
    client.flushdb()


@pytest.fixture
def processes(tmp_path):
    p = Processes(tmp_path)
    yield p
    p.close()


@pytest.fixture(scope="module")
def module_processes(tmp_path_factory):
    p = Processes(tmp_path_factory.mktemp("queue-procs"))
    yield p
    p.close()


def use_env(env: dict[str, str], monkeypatch) -> dict[str, str]:
    """Make a fleet's AGILE_* settings (its own Redis, queue and key prefix) this test's environment."""
    for key, value in env.items():
        if key.startswith("AGILE_"):
            monkeypatch.setenv(key, value)
    return env


def job_keys(fleet: dict) -> list[str]:
    """Every Redis key under a fleet's key prefix but the workers' own registry (agile.fleet)."""
    from agile.fleet import workers_key

    prefix = fleet["env"]["AGILE_KEY_PREFIX"]
    registry = workers_key(prefix, fleet["env"]["AGILE_QUEUE"])
    return sorted(k for k in fleet["redis"].client().keys(f"{prefix}:*") if k != registry)


def drop_jobs(fleet: dict) -> None:
    """Delete every key under a fleet's key prefix (a test starts with no job of an earlier one)."""
    client = fleet["redis"].client()
    for key in job_keys(fleet):
        client.delete(key)


def write_csv(path: Path, n: int, id_prefix: str = "c", extra: dict[int, str] | None = None) -> Path:
    """A comment file of n rows with ids `<prefix><row>`; `extra` replaces chosen rows' text."""
    import csv

    lines = (Path(ROOT / "data" / "sample_comments.csv").read_text(encoding="utf-8").splitlines())
    texts = [row["text"] for row in csv.DictReader(lines)]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        for i in range(n):
            writer.writerow([f"{id_prefix}{i}", (extra or {}).get(i, texts[i % len(texts)])])
    return path


def read_output(path: Path) -> list[dict]:
    import pandas as pd

    return pd.read_csv(path, dtype={"id": str}, keep_default_na=False).to_dict("records")


def run_cli(argv: list[str]) -> int:
    """What `agile ...` does for the queue commands (agile.cli.main registers the same parsers)."""
    from agile.producer.cli import register as register_producer
    from agile.worker.cli import register as register_worker

    parser = argparse.ArgumentParser(prog="agile")
    sub = parser.add_subparsers(required=True)
    register_worker(sub)
    register_producer(sub)
    args = parser.parse_args(argv)
    return args.func(args)


# ---------------------------------------------------------------- hooks inside test workers


def release_key(trace: str) -> str:
    """Set it to let a batch held by QUEUE_TEST_HOLD go on."""
    return f"{trace}:release"


def ended_key(trace: str) -> str:
    """A list of the batches a worker finished (its task returned or raised), as the trace has those it started."""
    return f"{trace}:ended"


def install_hooks() -> None:
    from celery.signals import task_postrun, task_prerun

    from agile.settings import QueueSettings

    trace = os.environ.get("QUEUE_TEST_TRACE")
    delay = float(os.environ.get("QUEUE_TEST_DELAY", "0"))
    once_file = os.environ.get("QUEUE_TEST_KILL_AFTER_WRITE_ONCE")
    # batch ids (comma-separated): their tasks wait, before scoring, for a release key
    hold = set(filter(None, os.environ.get("QUEUE_TEST_HOLD", "").split(",")))
    client = QueueSettings.from_env().redis_client() if trace else None

    @task_prerun.connect(weak=False)
    def before(task=None, kwargs=None, **_):
        batch = (kwargs or {}).get("batch_id")
        if client is not None:
            redelivered = bool((task.request.delivery_info or {}).get("redelivered")) if task else False
            client.rpush(trace, json.dumps({"pid": os.getpid(), "batch": batch, "at": time.time(),
                                            "redelivered": redelivered}))
            while batch in hold and not client.exists(release_key(trace)):
                time.sleep(0.02)  # a kill lands mid-batch however loaded the machine is
        time.sleep(delay)

    @task_postrun.connect(weak=False)
    def after(retval=None, kwargs=None, **_):
        if client is not None:
            client.rpush(ended_key(trace), json.dumps({"pid": os.getpid(), "batch": (kwargs or {}).get("batch_id"),
                                                       "at": time.time()}))
        written = isinstance(retval, dict) and "scored" in retval
        if once_file and written and not os.path.exists(once_file):
            Path(once_file).write_text(json.dumps(retval))
            os.kill(os.getpid(), signal.SIGKILL)  # written back, not yet acknowledged

    from agile.worker.runtime import Runtime

    score = Runtime.score

    def failing_score(self, policy, texts):  # poison, as a CUDA crash or an OOM kill would be
        if POISON_KILL in texts:
            os.kill(os.getpid(), signal.SIGKILL)
        if POISON_RAISE in texts:
            raise RuntimeError("queue test: this batch always fails")
        return score(self, policy, texts)

    Runtime.score = failing_score


if os.environ.get("QUEUE_TEST_HOOKS") == "1":
    install_hooks()
